"""Fixtures for the image cache: a folder of small JPEGs (one corrupt) and a project listing them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image_folder

#: data config recorded by ``grappa extract`` for a 32-pixel model: default cache size int(32 / 0.875) = 36
DATA_CONFIG = {"input_size": [3, 32, 32], "crop_pct": 0.875, "interpolation": "bicubic",
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CORRUPT = "class_001/broken.jpg"


def make_cache_images(root: Path) -> list[str]:
    """21 square JPEGs, 2 non-square PNGs and one corrupt file; sorted absolute paths."""
    from PIL import Image

    make_image_folder(root, n_classes=3, per_class=7, size=40, seed=3, fmt="jpg")
    rng = np.random.default_rng(5)
    for name, (w, h) in {"class_000/wide.png": (60, 40), "class_002/tall.png": (30, 50)}.items():
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        coarse.resize((w, h), Image.Resampling.BILINEAR).save(root / name)  # smooth, like a photo
    (root / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 this is not a complete JPEG")
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def write_features_train(store, paths: list[str], *, data_config: dict | None = DATA_CONFIG) -> None:
    """What ``grappa extract`` leaves for the training set (paths + complete provenance)."""
    from grappa_cli.data.tasks.base import ImageList

    params = {"backbone": "tiny"} | ({"data_config": data_config} if data_config else {})
    store.begin("features/train", "extract", params, {"images": ImageList(paths).fingerprint()})
    store.write_array("features/train/paths", np.asarray(paths, dtype=str))
    store.finish("features/train", images=len(paths))


@pytest.fixture
def cache_images(tmp_path: Path) -> list[str]:
    return make_cache_images(tmp_path / "images")


@pytest.fixture
def cache_project(tmp_path: Path, cache_images: list[str]):
    """A project whose features/train lists ``cache_images`` (extract's output, without features)."""
    from grappa_cli.setup.init import create_project

    project = create_project(tmp_path / "proj")
    write_features_train(project.store(), cache_images)
    return project
