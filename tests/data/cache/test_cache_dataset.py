"""Reading the cache: datasets by training row, read strategies, pairs, loaders with spawned workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from grappa_cli.data import cache as image_cache
from grappa_cli.data.cache_dataset import CachedImageDataset, CachedPairDataset, collate_cached, make_cached_loader
from grappa_cli.data.tasks.base import ImageList
from grappa_cli.errors import DataError, StoreError
from grappa_cli.storage.store import Store

from .conftest import make_cache_images

SIZE = 16
KEY = "cache/train"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[str], np.ndarray]:
    """A complete cache (4-row shards) and, per training row, the pixels it must hold."""
    root = tmp_path_factory.mktemp("cached")
    paths = make_cache_images(root / "images")
    store = Store(root / "s.zarr")
    image_cache.build_image_cache(store, "train", paths, size=SIZE, inputs={"images": ImageList(paths).fingerprint()},
                                  chunk_rows=4)
    by_train_row = np.zeros((len(paths), SIZE, SIZE, 3), np.uint8)
    by_train_row[store.read(f"{KEY}/rows")] = store.read(f"{KEY}/images")
    return root / "s.zarr", paths, by_train_row


def broken_row(paths: list[str]) -> int:
    return next(i for i, p in enumerate(paths) if p.endswith("broken.jpg"))


def test_items_are_the_images_of_training_rows(built) -> None:
    store_path, paths, expected = built
    ds = CachedImageDataset(store_path, KEY)
    assert len(ds) == len(paths) - 1 and broken_row(paths) not in ds.indices.tolist()
    assert ds.indices.tolist() == sorted(ds.indices.tolist())
    for p in range(len(ds)):
        item = ds[p]
        assert item.dtype == torch.uint8 and item.shape == (3, SIZE, SIZE)
        np.testing.assert_array_equal(item.permute(1, 2, 0).numpy(), expected[ds.indices[p]])
    chosen = CachedImageDataset(store_path, KEY, [5, 0, 17], return_index=True)
    image, row = chosen[0]
    assert row == 5 and torch.equal(image.permute(1, 2, 0), torch.from_numpy(expected[5]))


def test_whole_chunk_and_single_image_reads_agree(built) -> None:
    store_path, _, expected = built
    whole = CachedImageDataset(store_path, KEY, min_chunk_rows=1, chunk_cache=2)
    single = CachedImageDataset(store_path, KEY, min_chunk_rows=10**6)
    order = np.random.default_rng(0).permutation(len(whole)).tolist()
    a = whole.__getitems__(order)
    b = single.__getitems__(order)
    for x, y, p in zip(a, b, order, strict=True):
        assert torch.equal(x, y)
        np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), expected[whole.indices[p]])
    assert len(whole._chunks) <= 2 and not single._chunks


def test_refuses_unreadable_and_out_of_range_rows(built) -> None:
    store_path, paths, _ = built
    with pytest.raises(DataError, match="could not be decoded"):
        CachedImageDataset(store_path, KEY, [0, broken_row(paths)])
    with pytest.raises(DataError, match="training rows"):
        CachedImageDataset(store_path, KEY, [len(paths)])
    with pytest.raises(StoreError, match="grappa cache build"):
        CachedImageDataset(store_path, "cache/other")


def test_loader_batches_with_the_chunk_sampler_in_a_spawned_worker(built, monkeypatch) -> None:
    from grappa_cli import runtime

    monkeypatch.setattr(runtime, "MIN_ITEMS_PER_WORKER", 1)  # a worker even for this small dataset
    store_path, _, expected = built
    ds = CachedImageDataset(store_path, KEY, return_index=True)
    sampler = ds.batch_sampler(5, window=2, seed=1)
    loader = make_cached_loader(ds, sampler, num_workers=1)
    assert loader.num_workers == 1
    seen = []
    for images, rows in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, SIZE, SIZE)
        assert images.is_contiguous(memory_format=torch.channels_last)
        for image, row in zip(images, rows.tolist(), strict=True):
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected[row])
        seen += rows.tolist()
    assert sorted(seen) == ds.indices.tolist()
    # the same epoch through the main process gives the same batches
    inline = [rows.tolist() for _, rows in make_cached_loader(ds, sampler, num_workers=0)]
    assert [row for batch in inline for row in batch] == seen


def test_pairs_are_different_readable_images_drawn_per_epoch(built) -> None:
    store_path, paths, expected = built
    n = len(paths)
    bad = broken_row(paths)
    partners = np.stack([(np.arange(n) + k) % n for k in range(0, 4)], axis=1)  # row i: i, i+1, i+2, i+3
    partners[0, 1] = -1
    ds = CachedPairDataset(store_path, KEY, None, partners, seed=3, return_index=True)
    draws = {}
    for epoch in range(6):
        ds.set_epoch(epoch)
        for anchor_img, partner_img, i, j in ds.__getitems__(list(range(len(ds)))):
            assert j != i and j != bad and j in partners[i].tolist()
            np.testing.assert_array_equal(anchor_img.permute(1, 2, 0).numpy(), expected[i])
            np.testing.assert_array_equal(partner_img.permute(1, 2, 0).numpy(), expected[j])
            draws.setdefault(i, []).append(j)
    assert any(len(set(v)) > 1 for v in draws.values())  # partners change across epochs
    ds.set_epoch(2)
    assert [ds.partner_of(i) for i in range(3)] == [ds.partner_of(i) for i in range(3)]
    images, partner_images, anchors, _ = collate_cached(ds.__getitems__([0, 1, 2]))
    assert images.shape == partner_images.shape == (3, 3, SIZE, SIZE) and anchors.dtype == torch.long
    lonely = np.full((n, 2), -1)
    lonely[:, 0] = np.arange(n)
    with pytest.raises(DataError, match="no readable partner"):
        CachedPairDataset(store_path, KEY, None, lonely)
