"""Building the image cache: content, unreadable files, provenance, resumption, size estimates."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grappa_cli.data import cache as image_cache
from grappa_cli.data.images import load_rgb
from grappa_cli.data.tasks.base import ImageList
from grappa_cli.errors import StoreError
from grappa_cli.storage.store import ChunkedArray, Store

from .conftest import CORRUPT

SIZE = 36


def build(store: Store, paths: list[str], **kwargs):
    inputs = {"images": ImageList(paths).fingerprint()}
    kwargs.setdefault("chunk_rows", 8)
    return image_cache.build_image_cache(store, "train", paths, size=kwargs.pop("size", SIZE), inputs=inputs,
                                         **kwargs)


def read_group(store: Store) -> dict[str, np.ndarray]:
    return {name: store.read(f"cache/train/{name}") for name in ("images", "rows", "paths", "valid", "error")}


def test_build_stores_central_squares_in_a_permuted_row_order(tmp_path: Path, cache_images: list[str]) -> None:
    store = Store(tmp_path / "s.zarr")
    result = build(store, cache_images)
    data = read_group(store)
    n = len(cache_images)
    assert result.images == n and result.built == n and not result.skipped
    assert data["images"].shape == (n, SIZE, SIZE, 3) and data["images"].dtype == np.uint8
    assert sorted(data["rows"].tolist()) == list(range(n)) and data["rows"].tolist() != list(range(n))
    assert data["paths"].tolist() == [cache_images[r] for r in data["rows"]]
    for r, (row, path) in enumerate(zip(data["rows"], data["paths"], strict=True)):
        assert cache_images[row] == path
        if path.endswith(CORRUPT):
            assert not data["valid"][r] and data["error"][r] and not data["images"][r].any()
            continue
        assert data["valid"][r] and data["error"][r] == ""
        with Image.open(path) as img:
            # the reference definition: shorter side to SIZE, then the central SIZE x SIZE crop
            img = img.convert("RGB")
            w, h = img.size
            w2, h2 = (SIZE * w // h, SIZE) if w >= h else (SIZE, SIZE * h // w)
            left, top = (w2 - SIZE) // 2, (h2 - SIZE) // 2
            resized = img.resize((w2, h2), Image.Resampling.BICUBIC)
            expected = np.asarray(resized.crop((left, top, left + SIZE, top + SIZE)))
        # one resampling pass instead of resize-then-crop: the same sample positions and filter
        # support, only intermediate uint8 rounding differs
        diff = np.abs(data["images"][r].astype(int) - expected)
        assert diff.max() <= 2 and diff.mean() < 0.5, path
    assert [b["path"] for b in result.bad] == [str(Path(cache_images[0]).parent.parent / CORRUPT)]


def test_square_image_of_a_wide_photo_is_its_resized_centre() -> None:
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, 10:50] = 200  # the central 40 x 40 square is uniform; the margins are black
    out = image_cache.SquareImage(20)(Image.fromarray(pixels)).numpy()
    assert out.shape == (20, 20, 3)
    assert (out[:, 2:-2] == 200).all()  # the centre, away from the filter's reach into the margins
    assert out.min() > 150  # the black margins themselves are cut off


def test_provenance_skip_stale_and_force(tmp_path: Path, cache_images: list[str]) -> None:
    store = Store(tmp_path / "s.zarr")
    build(store, cache_images)
    record = store.provenance("cache/train")
    assert record["complete"] and record["stage"] == "cache"
    assert record["params"]["size"] == SIZE and record["params"]["chunk_rows"] == 8
    assert record["inputs"] == {"images": ImageList(cache_images).fingerprint()}
    assert record["summary"] == {"images": len(cache_images) - 1, "bad": 1, "size": SIZE}
    again = build(store, cache_images)
    assert again.skipped and again.built == 0
    with pytest.raises(StoreError, match=r"other inputs.*size"):
        build(store, cache_images, size=SIZE + 4)
    with pytest.raises(StoreError, match="input images"):
        build(store, cache_images[:-1])
    forced = build(store, cache_images, size=SIZE + 4, force=True)
    assert forced.built == len(cache_images) and store.read("cache/train/images").shape[1] == SIZE + 4


class StopAfter:
    """A reporter whose progress callback raises after ``shards`` shards: an interruption."""

    def __init__(self, shards: int) -> None:
        self.left = shards

    @contextmanager
    def task(self, description, total=None, unit="it"):
        outer = self

        class Task:
            def advance(self, n=1):
                outer.left -= 1
                if outer.left <= 0:
                    raise KeyboardInterrupt("interrupted")

            def update(self, **fields):
                pass

        yield Task()

    def log(self, message):
        pass


def test_interrupted_build_resumes_to_identical_arrays(tmp_path: Path, cache_images: list[str]) -> None:
    reference = Store(tmp_path / "ref.zarr")
    build(reference, cache_images)
    store = Store(tmp_path / "s.zarr")
    with pytest.raises(KeyboardInterrupt):
        build(store, cache_images, reporter=StopAfter(2))
    done = ChunkedArray(store, "cache/train/images")  # plain view: done markers per shard
    assert store.provenance("cache/train")["complete"] is False
    assert 0 < int(np.asarray(done.done[:]).sum()) < done.n_chunks
    resumed = build(store, cache_images, num_workers=2)  # the rest, in a process pool
    assert resumed.built == len(cache_images) - 2 * 8
    assert store.provenance("cache/train")["complete"]
    for name, values in read_group(reference).items():
        np.testing.assert_array_equal(read_group(store)[name], values, err_msg=name)


def test_size_estimates(tmp_path: Path, cache_images: list[str]) -> None:
    assert image_cache.estimate_cache_bytes(1000, 248) >= 1000 * 248 * 248 * 3
    assert image_cache.estimate_cache_bytes(1000, 248) < 1.01 * 1000 * 248 * 248 * 3
    assert image_cache.default_size({"input_size": (3, 224, 224), "crop_pct": 0.875}) == 256
    assert image_cache.default_size({"input_size": (3, 224, 224), "crop_pct": 0.9}) == 248
    assert image_cache.default_size({"input_size": (3, 224, 224), "crop_pct": 1.0}) == 224
    ratio = image_cache.estimate_compression(cache_images, SIZE, sample=8)
    assert 0 < ratio <= 1
    store = Store(tmp_path / "s.zarr")
    build(store, cache_images)
    pixels = image_cache.stored_bytes(store, "cache/train/images")
    estimate = ratio * len(cache_images) * SIZE * SIZE * 3
    assert 0.5 < estimate / pixels < 2.0
    assert image_cache.estimate_compression([str(tmp_path / "missing.jpg")], SIZE) == 1.0


def test_load_rgb_reference_is_what_the_cache_decodes(cache_images: list[str]) -> None:
    path = next(p for p in cache_images if p.endswith(".jpg") and not p.endswith("broken.jpg"))
    direct = image_cache.SquareImage(SIZE)(load_rgb(path, SIZE)).numpy()
    assert direct.shape == (SIZE, SIZE, 3) and direct.std() > 0
