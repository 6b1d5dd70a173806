"""Fixtures for the cached training path.

* ``cached_store``: a store as the training stages find it: ``features/train`` (paths, valid)
  of 24 images (one corrupt), a pseudo-label set ``clusters/k3`` (the class folder; one row
  unlabelled) and a complete image cache of 4-row shards at the default size for a 32-pixel
  model;
* the stage fixtures of ``tests/pipeline`` (a tiny project after extract and cluster).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data.cache.conftest import CORRUPT, DATA_CONFIG, make_cache_images
from tests.pipeline.conftest import clustered_project, extracted_project  # noqa: F401

#: the cache size for DATA_CONFIG (int(32 / 0.875))
CACHE_SIZE = 36
#: the training row left without a pseudo-label
UNLABELLED_ROW = 3


def class_of(path: str) -> int:
    """The pseudo-label the fixture gives an image: its class folder's number."""
    return int(Path(path).parent.name.split("_")[-1])


def write_training_set(store, paths: list[str]) -> np.ndarray:
    """``features/train`` as extract leaves it (the corrupt file invalid) and ``clusters/k3``; returns labels."""
    from grappa_cli.data.tasks.base import ImageList

    valid = np.array([not p.endswith(CORRUPT.split("/")[-1]) for p in paths])
    store.begin("features/train", "extract", {"backbone": "tiny", "data_config": DATA_CONFIG},
                {"images": ImageList(paths).fingerprint()})
    store.write_array("features/train/paths", np.asarray(paths, dtype=str))
    store.write_array("features/train/valid", valid)
    store.finish("features/train", images=len(paths))
    labels = np.array([class_of(p) if ok else -1 for p, ok in zip(paths, valid, strict=True)], dtype=np.int64)
    labels[UNLABELLED_ROW] = -1
    store.begin("clusters/k3", "cluster", {"k": 3}, {})
    store.write_array("clusters/k3/labels", labels)
    store.finish("clusters/k3")
    return labels


@pytest.fixture(scope="module")
def cached_store(tmp_path_factory):
    """(store, paths, labels) with a complete, current training cache (see the module docstring)."""
    from grappa_cli.data import cache as image_cache
    from grappa_cli.data.tasks.base import ImageList
    from grappa_cli.storage.store import Store

    root = tmp_path_factory.mktemp("cached_training")
    paths = make_cache_images(root / "images")
    store = Store(root / "store.zarr")
    labels = write_training_set(store, paths)
    image_cache.build_image_cache(store, "train", paths, size=CACHE_SIZE, chunk_rows=4,
                                  inputs={"images": ImageList(paths).fingerprint()})
    return store, paths, labels


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP threads waiting on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
