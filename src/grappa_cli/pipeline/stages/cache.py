"""``grappa cache``: the decode-once image cache of the training set (build, describe, remove).

The training set's images are the ones ``grappa extract`` listed in ``features/train/paths``;
the cache holds them in the same row numbering (see :mod:`grappa_cli.data.cache`), so
pseudo-labels and k-NN graphs index cached images directly. The default size comes from the
backbone's data config recorded by ``grappa extract``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grappa_cli.console import Reporter
from grappa_cli.data import cache as image_cache
from grappa_cli.data.training_cache_state import (
    FEATURES_KEY,
    TRAIN_CACHE,
    grown_from,
    image_list_fingerprint,
    recorded_growth,
    require_training_cache,
)
from grappa_cli.errors import StoreError, UsageError
from grappa_cli.project import Project
from grappa_cli.storage.store import Store

if TYPE_CHECKING:
    from grappa_cli.data.cached_training import TrainingCache

__all__ = [
    "AUTO_DISK_SHARE",
    "FEATURES_KEY",
    "TRAIN_CACHE",
    "CacheOptions",
    "CachePlan",
    "automatic_plan",
    "build",
    "build_for_training",
    "grow_training_cache",
    "grown_from",
    "image_list_fingerprint",
    "plan",
    "recorded_growth",
    "require_training_cache",
    "training_cache",
    "training_paths",
]

#: ``[data] cache = "auto"`` builds the cache when its estimated size on disk is at most this share
#: of the free space of the store's file system
AUTO_DISK_SHARE = 0.1



@dataclass
class CacheOptions:
    size: int | None = None
    chunk_rows: int = image_cache.DEFAULT_CHUNK_ROWS
    num_workers: int | None = None
    force: bool = False
    sample: int = 16


@dataclass
class CachePlan:
    """What ``build`` would do: shown to the user before they confirm."""

    key: str
    images: int
    size: int
    chunk_rows: int
    state: str
    raw_bytes: int
    estimated_bytes: int
    compression: float
    paths: list[str] = field(repr=False, default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    #: images the complete cache already holds when it grows (state ``"grow"``), else None
    grown_from: int | None = None

    @property
    def to_decode(self) -> int:
        """Images the build decodes: the added ones when the cache grows, else all."""
        return self.images - (self.grown_from or 0)

    def to_dict(self) -> dict[str, object]:
        return {**{k: v for k, v in self.__dict__.items() if k not in ("paths", "inputs")},
                "to_decode": self.to_decode}


def training_paths(store: Store) -> tuple[list[str], dict[str, Any]]:
    """The training set's image paths (rows of ``features/train``) and that group's record."""
    record = store.require_complete(FEATURES_KEY, "the training-set image list (features/train)",
                                    "grappa extract")
    if not store.exists(f"{FEATURES_KEY}/paths"):
        raise StoreError(f"{FEATURES_KEY} has no paths array", hint="run `grappa extract --split train --force`")
    return [str(p) for p in store.read(f"{FEATURES_KEY}/paths")], record


def resolve_size(record: dict[str, Any], size: int | None) -> int:
    """``size`` if given, else ``input_size / crop_pct`` of the backbone that made the features."""
    if size is not None:
        if size < 1:
            raise UsageError(f"--size must be a positive number of pixels (got {size})")
        return int(size)
    data_config = (record.get("params") or {}).get("data_config")
    if not data_config or "input_size" not in data_config:
        raise UsageError("features/train does not record the backbone's input size",
                         hint="pass --size (e.g. 248 for a 224-pixel model)")
    return image_cache.default_size(data_config)


def plan(project: Project, options: CacheOptions) -> CachePlan:
    """Sizes and state of the training cache to build (a stale cache is an error unless forced).

    A complete cache of the images before an incremental update is not stale: its state is
    ``"grow"`` and the build decodes the added images only.
    """
    store = project.store()
    paths, record = training_paths(store)
    size = resolve_size(record, options.size)
    inputs = {"images": image_list_fingerprint(paths)}
    old = None if options.force else grown_from(store, paths, size, options.chunk_rows)
    state = "grow" if old is not None else image_cache.check_state(
        store, TRAIN_CACHE, size=size, chunk_rows=options.chunk_rows, inputs=inputs, force=options.force)
    raw = image_cache.estimate_cache_bytes(len(paths), size)
    ratio = image_cache.estimate_compression(paths[old or 0:], size, sample=options.sample)
    return CachePlan(image_cache.cache_key(TRAIN_CACHE), len(paths), size, options.chunk_rows, state, raw,
                     int(raw * ratio), ratio, paths, inputs, old)


def build(
    project: Project, cache_plan: CachePlan, options: CacheOptions, reporter: Reporter | None = None,
) -> image_cache.CacheResult:
    """Build, resume or grow the training cache described by ``cache_plan``."""
    config = project.config()
    workers = config.data.num_workers if options.num_workers is None else options.num_workers
    return image_cache.build_image_cache(
        project.store(), TRAIN_CACHE, cache_plan.paths, size=cache_plan.size, inputs=cache_plan.inputs,
        chunk_rows=cache_plan.chunk_rows, num_workers=workers, force=options.force, reporter=reporter,
        grown_from=cache_plan.grown_from,
    )


def grow_training_cache(project: Project, reporter: Reporter | None = None) -> image_cache.CacheResult | None:
    """After an incremental update: grow a complete training cache by the added images (None: nothing to grow).

    ``grappa run`` calls it after extracting, so that the new sets and the fusion train from the
    cache as before instead of decoding every image again. Rank 0 decides and plans; under
    torchrun the ranks then build together or not at all.
    """
    from grappa_cli.train import distributed

    cache_plan = None
    if distributed.is_main() and project.store_path.exists():
        store = project.store(mode="r")
        record = store.provenance(image_cache.cache_key(TRAIN_CACHE)) or {}
        rows = store.array(f"{FEATURES_KEY}/paths").shape[0] if store.exists(f"{FEATURES_KEY}/paths") else 0
        if record.get("complete") and int(record.get("images", 0)) < rows:  # the training set grew since
            params = record["params"]
            try:
                candidate = plan(project, CacheOptions(size=int(params["size"]), chunk_rows=int(params["chunk_rows"])))
            except StoreError:  # made from another training set: training says so and decodes the files
                candidate = None
            cache_plan = candidate if candidate is not None and candidate.state == "grow" else None
    cache_plan = distributed.broadcast_object(cache_plan)
    if cache_plan is None:
        return None
    return build(project, cache_plan, CacheOptions(size=cache_plan.size, chunk_rows=cache_plan.chunk_rows), reporter)




def automatic_plan(project: Project, mode: str, device_type: str) -> tuple[CachePlan | None, str]:
    """The build that training does itself under ``[data] cache = mode``, or None, with why not.

    ``"auto"`` builds the cache when training runs on a GPU, where decoding and augmenting
    images one by one in PIL limits the steps (the cache's batches are augmented on the GPU),
    unless it would take more than :data:`AUTO_DISK_SHARE` of the free disk space. On a CPU
    training is bound by the model's arithmetic and the cache did not pay: the demo trained
    no faster with it (docs/benchmarks.md, "Training input"). ``"always"`` builds it on any
    device and whatever its size; ``"never"`` leaves it to `grappa cache build`. A complete,
    current cache (of any size a user built) is read as it is; a partial one is resumed, one of
    the images before an update grows, one of another training set is built again.
    """
    import shutil

    if mode == "never" or (mode == "auto" and device_type != "cuda"):
        return None, ""
    store = project.store(mode="r")
    try:
        require_training_cache(store)
        return None, ""  # complete and current: training reads it
    except StoreError:
        pass
    try:
        try:
            candidate = plan(project, CacheOptions())
        except StoreError:  # made from another training set: built again from scratch
            candidate = plan(project, CacheOptions(force=True))
    except UsageError as exc:  # features of an older version that do not record the input size
        return None, f"Not building the image cache: {exc}; `grappa cache build --size N` builds it."
    if mode == "auto":
        free = shutil.disk_usage(project.store_path).free
        if candidate.estimated_bytes > AUTO_DISK_SHARE * free:
            return None, (f"Not building the image cache: about {candidate.estimated_bytes / 2**30:,.1f} GiB, more "
                          f"than {AUTO_DISK_SHARE:.0%} of the {free / 2**30:,.1f} GiB free; `grappa cache build` "
                          "builds it anyway.")
    return candidate, ""


def build_for_training(project: Project, reporter: Reporter, device: str) -> image_cache.CacheResult | None:
    """Build, resume or grow the training cache before training on ``device`` reads its images,
    as ``[data] cache`` says (:func:`automatic_plan`); None when it does not build.

    Rank 0 decides; under torchrun the ranks then build together or not at all, as
    :func:`grow_training_cache` does.
    """
    from grappa_cli.runtime import resolve_device
    from grappa_cli.train import distributed

    cache_plan = None
    if distributed.is_main() and project.store_path.exists():
        cache_plan, why_not = automatic_plan(project, project.config().data.cache, resolve_device(device).type)
        if why_not:
            reporter.log(why_not)
    cache_plan = distributed.broadcast_object(cache_plan)
    if cache_plan is None:
        return None
    reporter.log(f"Decoding the {cache_plan.to_decode:,} training images once into {cache_plan.key} "
                 f"({cache_plan.size}px squares, about {cache_plan.estimated_bytes / 2**20:,.0f} MiB; "
                 "[data] cache = \"never\" turns this off).")
    force = cache_plan.state == "stale"
    return build(project, cache_plan, CacheOptions(size=cache_plan.size, chunk_rows=cache_plan.chunk_rows,
                                                   force=force), reporter)


def training_cache(project: Project, store: Store, reporter: Reporter, device: str) -> TrainingCache | None:
    """The training cache that training on ``device`` reads, built first when ``[data] cache`` says so.

    None when there is none: training decodes the image files. The hint that the cache would
    speed training up is for ``"never"`` only; under ``"auto"`` not building it was the choice.
    """
    from grappa_cli.data.cached_training import find_training_cache

    build_for_training(project, reporter, device)
    hinted = project.config().data.cache == "never"
    return find_training_cache(store, reporter if hinted else None)


@dataclass
class CacheEntry:
    key: str
    state: str
    images: int
    bad: int
    size: int
    bytes_on_disk: int
    created: str
    stale: bool
    #: training images added since it was built, which `grappa cache build` adds to it
    grows_by: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def info(project: Project) -> list[CacheEntry]:
    """Every cache in the store: completeness, counts, size on disk, staleness against features/train."""
    if not project.store_path.exists():
        return []
    store = project.store(mode="r")
    features = store.provenance(FEATURES_KEY) or {}
    current = (features.get("inputs") or {}).get("images")
    entries = []
    for name in store.children(image_cache.PREFIX):
        key = image_cache.cache_key(name)
        record = store.provenance(key) or {}
        recorded = (record.get("inputs") or {}).get("images")
        stale = name == TRAIN_CACHE and current is not None and recorded != current
        grows_by = 0
        if stale and record.get("complete") and store.exists(f"{FEATURES_KEY}/paths"):  # grows, not stale
            paths = [str(p) for p in store.read(f"{FEATURES_KEY}/paths")]
            old = recorded_growth(store, paths)
            stale, grows_by = old is None, 0 if old is None else len(paths) - old
        entries.append(CacheEntry(
            key=key, state="complete" if record.get("complete") else "partial",
            images=int(record.get("images", 0)), bad=len(record.get("bad_files", [])),
            size=int((record.get("params") or {}).get("size", 0)),
            bytes_on_disk=image_cache.stored_bytes(store, key), created=str(record.get("created", "")),
            stale=stale, grows_by=grows_by,
        ))
    return entries


def clear(project: Project, names: list[str] | None = None) -> list[str]:
    """Delete the named caches (default: all); returns the keys removed."""
    if not project.store_path.exists():
        return []
    store = project.store()
    existing = store.children(image_cache.PREFIX)
    unknown = sorted(set(names or []) - set(existing))
    if unknown:
        raise UsageError(f"no cache named {', '.join(unknown)}",
                         hint=f"existing caches: {', '.join(existing) or 'none'}")
    removed = []
    for name in names or existing:
        store.delete(image_cache.cache_key(name))
        removed.append(image_cache.cache_key(name))
    return removed
