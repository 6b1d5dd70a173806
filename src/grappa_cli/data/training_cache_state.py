"""Whether the stored image cache of the training set is complete and current.

Training reads the cache (:mod:`grappa_cli.data.cached_training`) only when it was built from
the current training image list; after an incremental update a cache of the images before it
is recognised (it grows by the added images, ``grappa cache build``). ``grappa cache`` builds it
(:mod:`grappa_cli.pipeline.stages.cache`); both ask this module.
"""

from __future__ import annotations

from grappa_cli.data import cache as image_cache
from grappa_cli.errors import StoreError
from grappa_cli.records import artifacts
from grappa_cli.storage.store import Store

FEATURES_KEY = artifacts.FEATURES_TRAIN
TRAIN_CACHE = "train"


def image_list_fingerprint(paths: list[str]) -> str:
    """The fingerprint ``grappa extract`` records for the same list (paths and file sizes)."""
    from grappa_cli.data.tasks.base import ImageList

    return ImageList(list(paths)).fingerprint()


def grown_from(store: Store, paths: list[str], size: int, chunk_rows: int) -> int | None:
    """How many images a complete training cache holds when they are the first of ``paths``, else None.

    That is the cache of the training set before an incremental update appended images (with the
    same size and shards): it grows by the added images instead of being rebuilt.
    """
    from grappa_cli.records import provenance as prov

    record = store.provenance(image_cache.cache_key(TRAIN_CACHE)) or {}
    old = int(record.get("images", 0))
    if not record.get("complete") or not 0 < old < len(paths):
        return None
    expected = prov.fingerprint({"params": image_cache.cache_params(size, chunk_rows),
                                 "inputs": {"images": image_list_fingerprint(paths[:old])}})
    return old if record.get("fingerprint") == expected else None


def recorded_growth(store: Store, paths: list[str]) -> int | None:
    """:func:`grown_from` at the size and shard rows the training cache was built with."""
    params = (store.provenance(image_cache.cache_key(TRAIN_CACHE)) or {}).get("params") or {}
    return grown_from(store, paths, int(params.get("size", 0)),
                      int(params.get("chunk_rows", image_cache.DEFAULT_CHUNK_ROWS)))


def require_training_cache(store: Store) -> str:
    """The key of the training cache, complete and made from the current training set.

    What training stages call before reading cached images; the errors say which command
    fixes the problem.
    """
    key = image_cache.cache_key(TRAIN_CACHE)
    record = store.require_complete(key, f"the image cache {key}", "grappa cache build")
    features = store.require_complete(FEATURES_KEY, "the training-set image list (features/train)",
                                      "grappa extract")
    current = (features.get("inputs") or {}).get("images")
    if current is not None and (record.get("inputs") or {}).get("images") != current:
        paths = [str(p) for p in store.read(f"{FEATURES_KEY}/paths")]
        old = recorded_growth(store, paths)
        if old is not None:
            raise StoreError(f"{key} holds the {old:,} training images before the last update, not the "
                             f"{len(paths) - old:,} added since",
                             hint="run `grappa cache build` (it decodes only the added images)")
        raise StoreError(f"{key} was built from another training set than features/train",
                         hint="run `grappa cache build --force`")
    return key
