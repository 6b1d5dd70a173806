"""A decode-once image cache in the project's store: uint8 squares, ready for tensor augmentation.

Training reads every image once per epoch, for several adaptor sets and fusion models; on a
GPU, decoding JPEGs again each time is what limits speed. The cache decodes each image once,
resizes its central square to ``size x size`` and stores the pixels, so that training only
decompresses rows and augments them as tensors (:mod:`grappa_cli.data.gpu_augment`).

Group ``cache/<name>``::

    images        [n, S, S, 3] uint8, zstd; shards of ``chunk_rows`` rows (one file each, the unit
                  of writing and resumption), one inner chunk per image (random access to one
                  image without decompressing its shard)
    images_done   [n_shards] bool: shards completely written (``ChunkedArray`` markers)
    rows          [n] int64: the training-set row (row of ``features/train``) each cache row holds
    paths         [n] str, valid [n] bool, error [n] str: in cache order

Cache rows are a seeded permutation of the training rows: a shard is then a random sample of
the training set, not a run of one class folder, which is what makes chunk-wise shuffling
(:class:`grappa_cli.data.chunk_sampler.ChunkShuffleBatchSampler`) good enough for training.

Departure from the reference transforms: an image is reduced to its central square before
random crops are taken, so crops never reach the parts of a non-square image outside it (for
a 4:3 photo, 1/8 of the width on each side). S defaults to ``input_size / crop_pct`` (248 for
a 224 model with crop_pct 0.9): the square the evaluation transform sees, with room for crops.

When an incremental update appends images to the training set, a complete cache of the earlier
images *grows* (:func:`grow_cache`): only the added images are decoded.

The fill is resumable like feature extraction: each shard is a pure function of its images,
written by one process, marked done afterwards; a rerun fills the shards not marked. Decoding
and compression run in a process pool (``spawn``: the parent runs zarr's event loop). Under
``torchrun`` (an initialised process group) each rank fills a disjoint share of the shards.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from grappa_cli.console import NullReporter, Reporter
from grappa_cli.data.timm_config import data_config_keys
from grappa_cli.errors import DataError, StoreError
from grappa_cli.records import provenance as prov
from grappa_cli.storage.store import ChunkedArray, Store, unreadable_files

if TYPE_CHECKING:  # annotations only: torch and PIL are imported where they are used
    from concurrent.futures import Future

    import torch
    from PIL import Image

PREFIX = "cache"
DEFAULT_CHUNK_ROWS = 128
#: The permutation of training rows into cache rows; fixed so that seeds elsewhere never force a rebuild.
ORDER_SEED = 0
FORMAT = 1
#: Bytes stored per image besides its pixels: shard index entry, done/valid flags (order of magnitude).
_ROW_OVERHEAD = 24


def cache_key(name: str) -> str:
    return f"{PREFIX}/{name}"


def default_size(data_config: Mapping[str, object]) -> int:
    """``input_size / crop_pct``: the square the evaluation transform crops from (>= input size)."""
    cfg = data_config_keys(data_config)
    size = cfg["input_size"]
    side = int(size[-1] if isinstance(size, list | tuple) else size)
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return max(side, int(side / crop_pct))


def estimate_cache_bytes(n: int, size: int) -> int:
    """Uncompressed size of a cache of ``n`` images at ``size x size`` (pixels plus bookkeeping)."""
    return int(n) * (int(size) * int(size) * 3 + _ROW_OVERHEAD)


def cache_params(size: int, chunk_rows: int) -> dict[str, object]:
    """What determines the cache's content (its provenance parameters)."""
    return {
        "size": int(size), "chunk_rows": int(chunk_rows), "order_seed": ORDER_SEED, "format": FORMAT,
        "resize": "central square, PIL bicubic (antialiased) to size x size",
    }


class SquareImage:
    """PIL image -> uint8 tensor [S, S, 3]: the central square resized to S (one resampling pass).

    Equivalent to "resize the shorter side to S, centre-crop S x S", but resamples only the
    pixels kept. Picklable, for spawned decoding processes.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch
        from PIL import Image

        width, height = image.size
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        square = image.resize((self.size, self.size), Image.Resampling.BICUBIC,
                              box=(left, top, left + side, top + side))
        return torch.from_numpy(np.array(square, dtype=np.uint8))


# -- the images array ---------------------------------------------------------------------------
class ShardedRows(ChunkedArray):
    """``ChunkedArray`` over a sharded array: the unit of writing is the shard (a file)."""

    def __init__(self, store: Store, key: str) -> None:
        super().__init__(store, key)
        shards = getattr(self.data, "shards", None)
        if shards:
            self.chunk_rows = int(shards[0])

    @classmethod
    def create_images(cls, store: Store, key: str, n: int, size: int, chunk_rows: int) -> ShardedRows:
        rows = max(1, min(chunk_rows, max(n, 1)))
        store.root.create_array(key, shape=(n, size, size, 3), dtype="uint8", chunks=(1, size, size, 3),
                                shards=(rows, size, size, 3), overwrite=True)
        store.create_array(key + "_done", (-(-n // rows),), bool, (1,), fill_value=False)
        return cls(store, key)


def estimate_compression(paths: Sequence[str], size: int, *, sample: int = 16, seed: int = 0) -> float:
    """Stored / raw bytes of the cache's codecs on a random sample of the images (1.0 if none decode)."""
    import zarr
    from zarr.storage import MemoryStore

    from grappa_cli.data.images import load_rgb

    if not paths:
        return 1.0
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paths), size=min(sample, len(paths)), replace=False)
    to_square = SquareImage(size)
    images = []
    for i in picks:
        try:
            images.append(to_square(load_rgb(paths[int(i)], size)).numpy())
        except Exception:  # an unreadable sample says nothing about compression
            continue
    if not images:
        return 1.0
    data = np.stack(images)
    group = zarr.open_group(MemoryStore(), mode="w")
    arr = group.create_array("x", shape=data.shape, dtype="uint8", chunks=(1, size, size, 3),
                             shards=data.shape)
    arr[...] = data
    return min(1.0, float(arr.nbytes_stored()) / data.nbytes)


# -- filling ------------------------------------------------------------------------------------
@dataclass
class CacheResult:
    key: str
    images: int
    size: int
    built: int = 0
    bad: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False

    @property
    def images_per_second(self) -> float:
        return self.built / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _ShardReport:
    chunk: int
    rows: int


_OPEN_STORES: dict[str, Store] = {}


def _worker_store(path: str) -> Store:
    if path not in _OPEN_STORES:
        _OPEN_STORES[path] = Store(Path(path))
    return _OPEN_STORES[path]


def fill_shard(store_path: str, key: str, chunk: int, paths: list[str], size: int) -> _ShardReport:
    """Decode the images of one shard and write it (pixels, valid, error, then its done marker)."""
    from grappa_cli.data.images import load_rgb

    store = _worker_store(store_path)
    images = ShardedRows(store, f"{key}/images")
    rows = images.rows(chunk)
    if len(paths) != rows.stop - rows.start:
        raise ValueError(f"shard {chunk} has {rows.stop - rows.start} rows, got {len(paths)} paths")
    pixels = np.zeros((len(paths), size, size, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    why = np.full(len(paths), "", dtype=object)
    to_square = SquareImage(size)
    for i, path in enumerate(paths):
        try:
            pixels[i] = to_square(load_rgb(path, size)).numpy()
            ok[i] = True
        except Exception as exc:  # any decoder failure marks this one file bad
            why[i] = f"{type(exc).__name__}: {exc}"[:300]
    store.array(f"{key}/valid")[rows] = ok
    store.array(f"{key}/error")[rows] = why.astype(str)
    images.write(chunk, pixels)
    return _ShardReport(chunk, len(paths))


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def check_state(
    store: Store, name: str, *, size: int, chunk_rows: int, inputs: dict[str, str], force: bool = False,
) -> str:
    """missing / partial / complete / stale; a stale cache is an error unless ``force``."""
    key = cache_key(name)
    params = cache_params(size, chunk_rows)
    state = store.state(key, params, inputs)
    if state == "stale" and not force:
        old = store.provenance(key) or {}
        raise StoreError(f"{key} was made from other inputs ({prov.describe_mismatch(old, params, inputs)})",
                         hint="rerun with --force to rebuild it")
    return state


def grow_cache(store: Store, key: str, paths: Sequence[str], old: int, *, params: Mapping[str, object],
               inputs: dict[str, str]) -> None:
    """Append cache rows for ``paths[old:]`` (the images an incremental update added to the training set).

    The first ``old`` rows keep their pixels; the new rows hold a seeded permutation of the new
    training rows, in new shards (a shard is then a random sample of the added images). The shard
    that held the old rows' tail is refilled whole (it gains new rows). The record turns
    incomplete first, so that no reader uses the arrays while they grow; a kill at any point
    leaves a partial cache that the rerun resumes, or rebuilds when it had not grown yet.
    """
    n = len(paths)
    grown = [*((store.provenance(key) or {}).get("grown") or []), old]  # image counts before each growth
    store.begin(key, "cache", params, inputs, images=n, grown=grown)
    images = store.array(f"{key}/images")
    shard_rows = int((getattr(images, "shards", None) or images.chunks)[0])
    added = old + np.random.default_rng(ORDER_SEED).permutation(n - old).astype(np.int64)
    for name, tail in (("rows", added), ("paths", np.asarray(paths, dtype=str)[added]),
                       ("valid", np.zeros(n - old, bool)), ("error", np.full(n - old, "", dtype=str))):
        array = store.array(f"{key}/{name}")
        array.resize((n,))
        array[old:] = tail
    images.resize((n, *images.shape[1:]))
    done = store.array(f"{key}/images_done")
    done.resize((-(-n // shard_rows),))
    done[old // shard_rows:] = False


def prepare_cache(
    store: Store, name: str, paths: Sequence[str], *, size: int, inputs: dict[str, str],
    chunk_rows: int = DEFAULT_CHUNK_ROWS, force: bool = False, grown_from: int | None = None,
) -> str:
    """Create the group's arrays unless a matching partial/complete cache exists; return the state found.

    ``grown_from``: the complete cache holds the first ``grown_from`` of ``paths`` with the same
    parameters (:func:`grappa_cli.pipeline.stages.cache.grown_from`): only the rest are added.
    """
    key = cache_key(name)
    if grown_from is not None and not force:
        grow_cache(store, key, paths, grown_from, params=cache_params(size, chunk_rows), inputs=inputs)
        return "partial"
    state = check_state(store, name, size=size, chunk_rows=chunk_rows, inputs=inputs, force=force)
    n = len(paths)
    intact = store.intact(key, {"rows": n, "paths": n, "valid": n, "error": n, "images": n})
    if state in ("complete", "partial") and not force and intact:
        return state
    params = cache_params(size, chunk_rows)
    order = np.random.default_rng(ORDER_SEED).permutation(n).astype(np.int64)
    rows = max(1, min(chunk_rows, max(n, 1)))
    store.delete(key)
    store.write_array(f"{key}/rows", order, (max(1, min(n, 1 << 16)),))
    store.write_array(f"{key}/paths", np.asarray(paths, dtype=str)[order], (rows,))
    store.create_array(f"{key}/valid", (n,), bool, (rows,), fill_value=False)
    store.create_array(f"{key}/error", (n,), str, (rows,))
    ShardedRows.create_images(store, f"{key}/images", n, size, chunk_rows)
    store.begin(key, "cache", params, inputs, images=n)  # last: the record says the arrays exist
    return state


def build_image_cache(
    store: Store, name: str, paths: Sequence[str], *, size: int, inputs: dict[str, str],
    chunk_rows: int = DEFAULT_CHUNK_ROWS, num_workers: int = 0, force: bool = False,
    reporter: Reporter | None = None, grown_from: int | None = None,
) -> CacheResult:
    """Fill ``cache/<name>`` with the images of ``paths`` (the training rows, in order).

    Resumes a partial cache with the same parameters and inputs; grows a complete one that
    holds the first ``grown_from`` paths; refuses a stale one unless ``force``.
    ``num_workers`` decoding processes (0: decode here). Progress goes to ``reporter`` shard
    by shard.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from grappa_cli.runtime import ignore_interrupts, spawn_context

    reporter = reporter or NullReporter()
    key = cache_key(name)
    paths = [str(p) for p in paths]
    if not paths:
        raise DataError(f"{key}: no images to cache", hint="check the training set (`grappa extract`)")
    rank, world = _dist()
    state = prepare_cache(store, name, paths, size=size, inputs=inputs, chunk_rows=chunk_rows,
                          force=force, grown_from=grown_from) if rank == 0 else "partial"
    _barrier()
    if state == "complete":
        return _result(store, key, skipped=True)
    images = ShardedRows(store, f"{key}/images")
    cached_paths = [str(p) for p in store.read(f"{key}/paths")]
    mine = [c for c in images.pending() if c % world == rank]
    jobs = [(c, cached_paths[images.rows(c)]) for c in mine]
    total = sum(len(p) for _, p in jobs)
    start = time.perf_counter()
    with reporter.task(f"caching {name} images at {size}px", total=total, unit="img") as bar:
        if num_workers <= 0:
            for chunk, chunk_paths in jobs:
                bar.advance(fill_shard(str(store.path), key, chunk, chunk_paths, size).rows)
        elif jobs:
            with ProcessPoolExecutor(max_workers=num_workers, mp_context=spawn_context(),
                                     initializer=ignore_interrupts) as pool:
                queue = list(reversed(jobs))
                running: set[Future[_ShardReport]] = set()
                try:
                    while queue or running:
                        while queue and len(running) < 2 * num_workers:  # bounded: memory stays flat
                            chunk, chunk_paths = queue.pop()
                            running.add(pool.submit(fill_shard, str(store.path), key, chunk, chunk_paths, size))
                        finished, running = wait(running, return_when=FIRST_COMPLETED)
                        for future in finished:
                            bar.advance(future.result().rows)
                except BaseException:
                    for future in running:
                        future.cancel()
                    raise
    seconds = time.perf_counter() - start
    _barrier()
    if rank == 0:
        if not images.complete():
            raise StoreError(f"{key}: some shards were not written", hint="rerun the same command to resume")
        valid = store.read(f"{key}/valid")
        if not valid.any():
            raise DataError(f"{key}: none of the {len(paths)} images could be read",
                            hint="check the dataset roots and the image files")
        bad = unreadable_files(store, key, valid)
        store.finish(key, summary={"images": int(valid.sum()), "bad": len(bad), "size": size},
                     bad_files=bad[:1000], size=size)
    result = _result(store, key)
    result.built = total
    result.seconds = seconds
    return result




def _result(store: Store, key: str, skipped: bool = False) -> CacheResult:
    record = store.provenance(key) or {}
    params = record.get("params") or {}
    return CacheResult(key, int(record.get("images", 0)), int(params.get("size", 0)),
                       bad=list(record.get("bad_files", [])), skipped=skipped)


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheLayout:
    """What a reader needs to know about a complete cache (read once, in the main process)."""

    store_path: Path
    key: str
    size: int
    chunk_rows: int
    rows: np.ndarray  # cache row -> training row
    valid: np.ndarray  # by cache row

    @property
    def n(self) -> int:
        return len(self.rows)

    @cached_property
    def _inverse(self) -> np.ndarray:
        inverse = np.empty(self.n, np.int64)
        inverse[self.rows] = np.arange(self.n)
        return inverse

    def cache_rows_of(self, train_rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Cache rows holding the given training rows."""
        return self._inverse[np.asarray(train_rows, dtype=np.int64)]

    def valid_train_rows(self) -> np.ndarray:
        """Training rows whose image decoded, ascending."""
        return np.sort(self.rows[self.valid])


def read_layout(store_path: Path | str, key: str) -> CacheLayout:
    """Layout of a complete cache group; an error naming the command that builds it otherwise."""
    store = Store(Path(store_path), mode="r")
    store.require_complete(key, f"the image cache {key}", "grappa cache build")
    images = store.array(f"{key}/images")
    shards = getattr(images, "shards", None) or images.chunks
    return CacheLayout(Path(store_path), key, int(images.shape[1]), int(shards[0]),
                       store.read(f"{key}/rows").astype(np.int64), store.read(f"{key}/valid").astype(bool))


def stored_bytes(store: Store, key: str) -> int:
    """Bytes the group occupies on disk."""
    root = Path(store.path) / key
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
