"""Test images decoded once per ``grappa eval``: a pixel cache of the test splits, embeddings per image.

``grappa eval`` embeds each task's test split with each model. Decoding and resizing an image
costs about as much as a small model's forward pass, and it used to be paid again for every
model; two tasks over the same images (a fine and a coarse labelling of one folder) embedded
them twice. Here:

1. **Pixel cache** ``cache/test-<digest>``: the images of a test split, each once (images are
   identified by path and file size, as in
   :meth:`~grappa_cli.data.tasks.base.ImageList.fingerprint`; tasks over the same images, such
   as two labellings of one folder, share one cache), after the evaluation
   transform's PIL part (RGB, resize, centre crop) as uint8 ``[n, H, W, 3]``, zstd-compressed
   in shards of ``chunk_rows`` images. Only the tensor part of the transform (to float,
   normalise) runs on read, so the model sees exactly the tensors that decoding gives. The
   fill is resumable shard by shard (:class:`~grappa_cli.storage.store.ChunkedArray`); later runs and
   every model reuse it while the images and the transform are unchanged. ``grappa cache
   info`` lists it and ``grappa cache clear`` removes it.
2. **Embeddings per image**: a model embeds each cached image it needs once; the group
   ``eval/<model>/<task>`` of every task over those images is then written from their rows,
   with the arrays and the record :func:`grappa_cli.pipeline.stages.embed.run_embedding` writes. These
   embeddings live in memory (n x D float32) for the time one model is evaluated.

Used when the transform splits into a PIL part and a tensor part (timm's evaluation
transform does) and outside ``torchrun``; otherwise ``grappa eval`` decodes per model.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from grappa_cli.console import NullReporter, Reporter
from grappa_cli.storage.store import ChunkedArray, Store, unreadable_files

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torchvision.transforms import Normalize

    from grappa_cli.pipeline.stages.embed import EmbedJob
    from grappa_cli.runtime import Precision


class EmbeddingJob(Protocol):
    """A ``grappa eval`` job that embeds a test split with a model (``stages.evaluate``)."""

    embed: EmbedJob | None
    embed_state: str

PREFIX = "cache/test-"
FORMAT = 1
DEFAULT_CHUNK_ROWS = 64
_TO_TENSOR = ("ToTensor", "MaybeToTensor")


@dataclass(frozen=True)
class SplitTransform:
    """An evaluation transform as its PIL part (decode-time) and its tensor part (read-time).

    ``batch`` (when the tensor part is ``ToTensor`` then ``Normalize``, as timm's is) does the
    tensor part on a whole ``[b, H, W, 3]`` uint8 array at once, with the same elementwise
    operations, so it gives the same bits as ``tensor`` image by image.
    """

    pixels: Callable[[Image.Image], object]
    tensor: Callable[[torch.Tensor], torch.Tensor]
    description: str
    batch: Callable[[np.ndarray], torch.Tensor] | None = None


class _BatchToTensorNormalize:
    """``Normalize(ToTensor(image))`` for a [b, H, W, 3] uint8 array: divide by 255, then (x - mean) / std."""

    def __init__(self, normalize: Normalize) -> None:
        import torch

        self.mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(normalize.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
        return x.to(torch.float32).div(255).sub_(self.mean).div_(self.std)


def split_transform(transform: object) -> SplitTransform | None:
    """Split ``transform`` before its first ``ToTensor``; None when it has no such step."""
    from torchvision import transforms as T

    steps: list[object] = []

    def flatten(t: object) -> None:
        if isinstance(t, T.Compose):
            for inner in t.transforms:
                flatten(inner)
        else:
            steps.append(t)

    flatten(transform)
    cut = next((i for i, s in enumerate(steps) if type(s).__name__ in _TO_TENSOR), None)
    if cut is None or cut == 0:
        return None
    tail = steps[cut:]
    batch = None
    last = tail[-1]
    if len(tail) == 2 and type(last) is T.Normalize and not getattr(last, "inplace", False):
        batch = _BatchToTensorNormalize(last)
    return SplitTransform(T.Compose(steps[:cut]), T.Compose(tail), " | ".join(map(repr, steps[:cut])), batch)


class _PixelsOf:
    """The PIL part of the transform as a picklable callable returning uint8 [H, W, 3] tensors."""

    def __init__(self, pixels: Callable[[Image.Image], object]) -> None:
        self.pixels = pixels

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        out = self.pixels(image)
        array = np.asarray(out, dtype=np.uint8)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"the transform's PIL part gave an array of shape {array.shape}")
        return torch.from_numpy(array.copy())


def image_identities(paths: Sequence[str]) -> list[tuple[str, int]]:
    """(path, size in bytes, -1 when unreadable) of each path: what identifies an image."""
    out = []
    for path in paths:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        out.append((path, size))
    return out


def pixel_cache_key(identities: Sequence[tuple[str, int]], params: Mapping[str, object]) -> str:
    digest = hashlib.sha256(repr(sorted(params.items())).encode())
    for path, size in identities:
        digest.update(f"{path}\t{size}\n".encode())
    return PREFIX + digest.hexdigest()[:16]


@dataclass
class PixelCache:
    """A filled pixel cache: its key, row of each path, and the tensor part of the transform."""

    key: str
    rows: dict[str, int]
    tensor: Callable[[torch.Tensor], torch.Tensor]
    decoded: int  # images decoded to build it in this run (0 when it was complete)
    batch: Callable[[np.ndarray], torch.Tensor] | None = None


def ensure_pixel_cache(
    store: Store, paths: Sequence[str], split: SplitTransform, *, size: tuple[int, int], min_side: int | None,
    num_workers: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS, reporter: Reporter | None = None,
) -> PixelCache:
    """The pixel cache of ``paths`` (each once), filled where it is not yet (resumable)."""
    import torch

    from grappa_cli.data.images import ImageDataset, make_loader

    reporter = reporter or NullReporter()
    unique = sorted(set(paths))
    identities = image_identities(unique)
    params = {"size": int(size[-1]), "height": int(size[0]), "width": int(size[1]), "min_side": min_side,
              "transform": split.description, "format": FORMAT, "chunk_rows": int(chunk_rows)}
    key = pixel_cache_key(identities, params)
    inputs = {"images": key.removeprefix(PREFIX)}
    state = store.state(key, params, inputs)
    n = len(unique)
    chunk_count = -(-n // max(1, min(int(chunk_rows), max(n, 1))))
    arrays = {"pixels": n, "pixels_done": chunk_count, "valid": n, "error": n, "paths": n}
    if state == "partial" and not store.intact(key, arrays):
        state = "missing"  # interrupted before all its arrays were made: start it again
    if state in ("missing", "stale"):
        store.delete(key)
        store.begin(key, "eval", params, inputs, images=n)
        ChunkedArray.create(store, f"{key}/pixels", (n, *size, 3), np.uint8, chunk_rows)
        rows = max(1, min(chunk_rows, n))
        store.create_array(f"{key}/valid", (n,), bool, (rows,), fill_value=False)
        store.create_array(f"{key}/error", (n,), str, (rows,))
        store.write_array(f"{key}/paths", np.asarray(unique, dtype=str), (rows,))
    decoded = 0
    if state != "complete":
        chunks = ChunkedArray(store, f"{key}/pixels")
        pending = chunks.pending()
        indices = [i for c in pending for i in range(chunks.rows(c).start, chunks.rows(c).stop)]
        dataset = ImageDataset(unique, _PixelsOf(split.pixels), indices, min_side=min_side)
        loader = make_loader(dataset, batch_size=chunk_rows, num_workers=num_workers, device=torch.device("cpu"))
        filling: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]] = {}

        def shard(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
            """The buffers of shard ``c``, made on its first image (only shards being filled are held)."""
            if c not in filling:
                r = chunks.rows(c)
                filling[c] = (np.zeros((r.stop - r.start, *size, 3), np.uint8), np.zeros(r.stop - r.start, bool),
                              np.full(r.stop - r.start, "", dtype=object), [r.stop - r.start])
            return filling[c]

        valid = store.array(f"{key}/valid")
        errors = store.array(f"{key}/error")
        with reporter.task("decoding test images once for every model", total=len(indices), unit="img") as bar:
            for batch in loader:
                done: list[int] = []
                for image, index in zip(batch.images, batch.indices.tolist(), strict=True):
                    c = index // chunks.chunk_rows
                    shard(c)[0][index - chunks.rows(c).start] = image.numpy()
                    shard(c)[1][index - chunks.rows(c).start] = True
                    done.append(index)
                for index, error in batch.bad:
                    c = index // chunks.chunk_rows
                    shard(c)[2][index - chunks.rows(c).start] = error
                    done.append(index)
                for index in done:
                    c = index // chunks.chunk_rows
                    filling[c][3][0] -= 1
                    if filling[c][3][0] == 0:
                        pixels, ok, why, _ = filling.pop(c)
                        valid[chunks.rows(c)] = ok
                        errors[chunks.rows(c)] = why.astype(str)
                        chunks.write(c, pixels)
                decoded += len(done)
                bar.advance(len(done))
        mask = np.asarray(valid[:])
        store.finish(key, summary={"images": int(mask.sum()), "bad": int((~mask).sum())},
                     images=n, bad_files=unreadable_files(store, key, mask)[:1000])
    return PixelCache(key, {p: i for i, p in enumerate(unique)}, split.tensor, decoded, split.batch)


def embed_images(
    store: Store, cache: PixelCache, model: torch.nn.Module, *, dim: int, batch_size: int, device: torch.device,
    amp: bool | Precision,
    compile: bool | None = None, reporter: Reporter | None = None, label: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(embeddings float32 [n, dim], valid [n], error [n])`` of the cached images, in cache rows.

    Shards are read whole (one decompression each); the tensor part of the transform runs
    per image, so each tensor equals the one decoding the file gives.
    """
    import torch

    from grappa_cli.pipeline.stages.embed import forward_in_parts
    from grappa_cli.runtime import HostCopies, autocast, maybe_compile

    reporter = reporter or NullReporter()
    pixels = ChunkedArray(store, f"{cache.key}/pixels")
    valid = store.read(f"{cache.key}/valid").astype(bool)
    errors = store.read(f"{cache.key}/error").astype(object)
    n = len(valid)
    out = np.zeros((n, dim), dtype=np.float32)
    model = maybe_compile(model.to(device).eval(), compile)
    copies = HostCopies()

    def land(ready: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for values, rows in ready:
            out[rows] = values

    with reporter.task(f"embedding cached test images{label}", total=int(valid.sum()), unit="img") as bar:
        queue: list[torch.Tensor] = []
        queued: list[int] = []

        def run() -> None:
            batch = torch.stack(queue)
            with torch.inference_mode(), autocast(device, amp):
                result = forward_in_parts(model, batch.to(device, non_blocking=True))  # bounded memory on a CPU
            land(copies.push(result.float(), np.asarray(queued)))
            bar.advance(len(queued))
            queue.clear()
            queued.clear()

        for c in range(pixels.n_chunks):
            rows = pixels.rows(c)
            good = np.flatnonzero(valid[rows]) + rows.start
            if not len(good):
                continue
            block = np.asarray(pixels.data[rows])[good - rows.start]
            tensors = cache.batch(block) if cache.batch is not None else [cache.tensor(p) for p in block]
            for image, index in zip(tensors, good, strict=True):
                queue.append(image)
                queued.append(int(index))
                if len(queue) == batch_size:
                    run()
        if queue:
            run()
        land(copies.flush())
    return out, valid, errors


def write_task_group(
    store: Store, job: EmbedJob, cache: PixelCache, embeddings: np.ndarray, valid: np.ndarray, errors: np.ndarray, *,
    dim: int, dtype: str, chunk_rows: int, force: bool,
) -> None:
    """Fill ``job.key`` (an :class:`~grappa_cli.pipeline.stages.embed.EmbedJob`) from per-image rows."""
    from grappa_cli.pipeline.stages.embed import finish_group, prepare

    state = prepare(store, job, dim=dim, dtype=dtype, chunk_rows=chunk_rows, force=force)
    if state == "complete":
        return
    rows = np.asarray([cache.rows[p] for p in job.paths], dtype=np.int64)
    chunks = ChunkedArray(store, f"{job.key}/embeddings")
    group_valid = store.array(f"{job.key}/valid")
    group_error = store.array(f"{job.key}/error")
    for c in chunks.pending():
        part = chunks.rows(c)
        mine = rows[part]
        group_valid[part] = valid[mine]
        group_error[part] = errors[mine].astype(str)
        chunks.write(c, np.where(valid[mine][:, None], embeddings[mine], 0.0).astype(dtype))
    finish_group(store, job, np.asarray(group_valid[:]), dim=dim, dtype=dtype)


def embed_jobs_from_cache(
    store: Store, cache: PixelCache, jobs: Sequence[EmbeddingJob], model: torch.nn.Module, *, dim: int,
    dtype: str, chunk_rows: int, batch_size: int, device: torch.device, amp: bool | Precision,
    compile: bool | None = None,
    reporter: Reporter | None = None, label: str = "",
) -> float:
    """Embed the cached images once with ``model`` and write the group of every job; returns seconds.

    ``jobs`` are ``grappa eval``'s jobs (``.embed`` an EmbedJob, ``.embed_state``) whose
    images are all in ``cache``.
    """
    start = time.perf_counter()
    embeddings, valid, errors = embed_images(store, cache, model, dim=dim, batch_size=batch_size, device=device,
                                             amp=amp, compile=compile, reporter=reporter, label=label)
    for job in jobs:
        assert job.embed is not None  # jobs that embed
        write_task_group(store, job.embed, cache, embeddings, valid, errors, dim=dim, dtype=dtype,
                         chunk_rows=chunk_rows, force=job.embed_state == "stale")
    return time.perf_counter() - start
