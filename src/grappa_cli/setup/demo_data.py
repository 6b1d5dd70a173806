"""Deterministic demo datasets built from images the dependencies bundle.

Three retrieval tasks of different granularity, each written as an ordinary
``class/image.png`` folder the user can open:

* ``digits`` (coarse, 10 classes): scikit-learn's 8x8 handwritten digits, upscaled and tinted;
* ``photos`` (instance level, 24 classes): each class is one spot of scikit-learn's two sample
  photographs (``china.jpg``, ``flower.jpg``); its images are jittered crops of that spot;
* ``shapes`` (two-level hierarchy, 24 classes): procedurally drawn shapes where the coarse
  level is the shape (circle, square, triangle, cross) and the fine level adds its colour, so
  that pseudo-labels at small k match shapes and at larger k match shape + colour.

Everything derives from a seed, so the same call writes byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 96


@dataclass(frozen=True)
class DemoScale:
    """How many images per class each task gets."""

    digits_per_class: int = 40
    photos_per_class: int = 12
    shapes_per_class: int = 12


SCALES = {"default": DemoScale(), "tiny": DemoScale(digits_per_class=8, photos_per_class=4, shapes_per_class=4)}


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False)


def sklearn_data_file(*parts: str) -> Path:
    """A data file that ships inside scikit-learn (``sklearn/datasets/...``), found without
    importing scikit-learn: the import alone takes 2-3 s, longer than writing every demo image."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is not installed")
    return Path(next(iter(spec.submodule_search_locations)), "datasets", *parts)


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8] float64 in 0..16, targets)``: what ``sklearn.datasets.load_digits``
    returns as ``images`` and ``target``, read from the same file the same way."""
    import gzip

    with gzip.open(sklearn_data_file("data", "digits.csv.gz"), "rt") as compressed:
        data = np.loadtxt(compressed, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two sample photographs (``china.jpg``, ``flower.jpg``) as RGB arrays, like
    ``sklearn.datasets.load_sample_images().images``."""
    folder = sklearn_data_file("images")
    photos = []
    for path in sorted(folder.glob("*.jpg")):
        with path.open("rb") as image_file:
            photos.append(np.asarray(Image.open(image_file)))
    return photos


def make_digits(root: Path, per_class: int, rng: np.random.Generator) -> int:
    images, targets = digit_images()
    count = 0
    for label in range(10):
        rows = np.flatnonzero(targets == label)[:per_class]
        for i, row in enumerate(rows):
            gray = (images[row] / 16.0 * 255).astype(np.uint8)
            img = Image.fromarray(gray).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
            tint = rng.uniform(0.6, 1.0, size=3)
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) * tint
            background = rng.uniform(0, 60, size=3)
            rgb = np.clip(rgb + background, 0, 255).astype(np.uint8)
            _save(Image.fromarray(rgb), root / f"digit_{label}" / f"{i:03d}.png")
            count += 1
    return count


def make_photos(root: Path, per_class: int, rng: np.random.Generator) -> int:
    count = 0
    for name, photo in zip(("china", "flower"), sample_photos(), strict=True):
        h, w, _ = photo.shape
        spots = [(int(y), int(x)) for y in np.linspace(70, h - 70, 3) for x in np.linspace(70, w - 70, 4)]
        for s, (cy, cx) in enumerate(spots):
            for i in range(per_class):
                half = int(rng.integers(40, 64))
                dy, dx = rng.integers(-12, 13, size=2)
                y0, x0 = max(0, cy + dy - half), max(0, cx + dx - half)
                crop = Image.fromarray(photo[y0:y0 + 2 * half, x0:x0 + 2 * half])
                crop = crop.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                _save(crop, root / f"{name}_spot{s:02d}" / f"{i:03d}.png")
                count += 1
    return count


_COLOURS = {
    "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200),
    "yellow": (210, 190, 40), "purple": (140, 50, 170), "orange": (230, 120, 30),
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # cross
        t = r / 3
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)


def make_shapes(root: Path, per_class: int, rng: np.random.Generator) -> int:
    count = 0
    for shape in ("circle", "cross", "square", "triangle"):
        for colour, rgb in _COLOURS.items():
            for i in range(per_class):
                background = tuple(int(v) for v in rng.integers(200, 256, size=3))
                img = Image.new("RGB", (SIZE, SIZE), background)
                draw = ImageDraw.Draw(img)
                r = float(rng.uniform(18, 34))
                cx, cy = rng.uniform(r + 4, SIZE - r - 4, size=2)
                jitter = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in rgb)
                _draw_shape(draw, shape, cx, cy, r, jitter)
                img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2))))
                _save(img, root / f"{shape}_{colour}" / f"{i:03d}.png")
                count += 1
    return count


MAKERS: dict[str, tuple[Callable[[Path, int, np.random.Generator], int], str]] = {
    "digits": (make_digits, "digits_per_class"),
    "photos": (make_photos, "photos_per_class"),
    "shapes": (make_shapes, "shapes_per_class"),
}


def write_demo_datasets(root: Path, scale: DemoScale, seed: int = 0) -> dict[str, int]:
    """Write every demo task under ``root/<task>/<class>/<i>.png``; returns image counts."""
    counts = {}
    for offset, (task, (maker, field)) in enumerate(MAKERS.items()):
        rng = np.random.default_rng(seed * 1000 + offset)
        counts[task] = maker(root / task, getattr(scale, field), rng)
    return counts
