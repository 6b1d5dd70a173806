"""Real-image retrieval tasks for the quality harness, written as ordinary image folders.

Every task is a ``ROOT/<class>/<image>.png`` folder that ``grappa``'s ``imagefolder`` reader
splits into train and test classes (alphabetical halves, the paper's DML split). Only real
images are used:

* ``digits``: scikit-learn's handwritten digits (scanned, 8x8), upscaled; 10 classes.
* ``photos``: crops around 24 spots of scikit-learn's two sample photographs (instance level).
* ``stamps``: Tux Paint's stamp images (Debian ``tuxpaint-stamps-default``), fine classes =
  the stamp's folder (``animals/birds``, ``food/fruit``, ...).
* ``stamps-coarse``: the test images of ``stamps`` labelled by their top-level folder
  (``animals``, ``food``): a coarse and a fine task on the same images. Every image of it is a
  test image (``split = "all-test"``), so it adds nothing to the training set and no test
  image of one task is a training image of the other.
* ``clipart``: Open Clip Art Library drawings (Debian ``openclipart-png``), labelled by category.

``split="val"`` writes only the *training* classes of each task (the first alphabetical half),
so that ``grappa`` splits those again into train and *validation* classes: settings are chosen
on validation classes carved from the training classes, never on the test classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96
STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
CLIPART_ROOT = Path("/usr/share/openclipart/png")
#: The Debian packages that provide the collections (``.ci/run`` installs the first).
PACKAGES = {"stamps": "tuxpaint-stamps-default", "stamps-coarse": "tuxpaint-stamps-default",
            "clipart": "openclipart-png"}


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def _on_white(path: str) -> Image.Image:
    """A drawing with transparency, composited on white and padded to a ``SIZE`` square."""
    with Image.open(path) as img:
        img.load()
        rgba = img.convert("RGBA")
    rgba.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((SIZE - rgba.width) // 2, (SIZE - rgba.height) // 2))
    return canvas.convert("RGB")


def digits_samples(per_class: int) -> dict[str, list[Image.Image]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out: dict[str, list[Image.Image]] = {}
    for label in range(10):
        rows = np.flatnonzero(digits.target == label)[:per_class]
        images = []
        for row in rows:
            gray = (digits.images[row] / 16.0 * 255).astype(np.uint8)
            images.append(Image.fromarray(gray).resize((64, 64), Image.Resampling.BICUBIC).convert("RGB"))
        out[f"digit_{label}"] = images
    return out


def photos_samples(per_class: int) -> dict[str, list[Image.Image]]:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    out: dict[str, list[Image.Image]] = {}
    for name, photo in zip(("china", "flower"), load_sample_images().images, strict=True):
        h, w, _ = photo.shape
        spots = [(int(y), int(x)) for y in np.linspace(70, h - 70, 3) for x in np.linspace(70, w - 70, 4)]
        for s, (cy, cx) in enumerate(spots):
            images = []
            for _ in range(per_class):
                half = int(rng.integers(40, 64))
                dy, dx = rng.integers(-12, 13, size=2)
                y0, x0 = max(0, cy + dy - half), max(0, cx + dx - half)
                crop = Image.fromarray(photo[y0:y0 + 2 * half, x0:x0 + 2 * half])
                images.append(crop.resize((SIZE, SIZE), Image.Resampling.BILINEAR))
            out[f"{name}_spot{s:02d}"] = images
    return out


def _stamp_files() -> dict[str, list[str]]:
    """PNG stamps by folder relative to the stamps root, ``cartoon`` sub-folders merged into their parent."""
    found: dict[str, list[str]] = {}
    for current, dirs, files in os.walk(STAMPS_ROOT):
        dirs.sort()
        rel = os.path.relpath(current, STAMPS_ROOT)
        parts = [p for p in rel.split(os.sep) if p not in (".", "cartoon")] or ["misc"]
        pngs = sorted(os.path.join(current, f) for f in files if f.lower().endswith(".png"))
        if pngs:
            found.setdefault("/".join(parts), []).extend(pngs)
    return found


def stamps_samples(per_class: int, *, min_images: int = 8) -> dict[str, list[str]]:
    """Stamp files by fine class (folder), classes with at least ``min_images`` PNGs."""
    if not STAMPS_ROOT.is_dir():
        raise FileNotFoundError(f"{STAMPS_ROOT} is missing: apt-get install {PACKAGES['stamps']}")
    return {folder.replace("/", "-"): sorted(files)[:per_class]
            for folder, files in sorted(_stamp_files().items()) if len(files) >= min_images}


def stamps_coarse_samples(per_class: int, *, split: str) -> dict[str, list[str]]:
    """The evaluated fine classes' stamps, labelled by their top-level folder."""
    fine = stamps_samples(per_class)
    evaluated = held_out_classes(list(fine), split)
    coarse: dict[str, list[str]] = {}
    for label in evaluated:
        coarse.setdefault(label.split("-")[0], []).extend(fine[label])
    return coarse


def clipart_samples(per_class: int, *, min_images: int = 40) -> dict[str, list[Image.Image]]:
    if not CLIPART_ROOT.is_dir():
        raise FileNotFoundError(f"{CLIPART_ROOT} is missing: apt-get install {PACKAGES['clipart']}")
    out = {}
    for category in sorted(os.listdir(CLIPART_ROOT)):
        files = sorted(str(p) for p in (CLIPART_ROOT / category).rglob("*.png"))
        if len(files) < min_images:
            continue
        rng = np.random.default_rng(len(out))
        chosen = sorted(rng.choice(len(files), size=min(per_class, len(files)), replace=False))
        images = []
        for i in chosen:
            try:
                images.append(_on_white(files[i]))
            except OSError:
                continue
        out[category] = images
    return out


#: name -> builder(per_class, split) of ``{class: [images or image files]}``
BUILDERS: dict[str, Callable[[int, str], dict[str, list]]] = {
    "digits": lambda n, split: digits_samples(n),
    "photos": lambda n, split: photos_samples(n),
    "stamps": lambda n, split: stamps_samples(n),
    "stamps-coarse": lambda n, split: stamps_coarse_samples(n, split=split),
    "clipart": lambda n, split: clipart_samples(n),
}
#: tasks whose every image is a test image (their ``[tasks.NAME] split``)
ALL_TEST = {"stamps-coarse"}


def available(name: str) -> bool:
    """Whether the images of task ``name`` are installed on this machine."""
    if name in ("stamps", "stamps-coarse"):
        return STAMPS_ROOT.is_dir()
    if name == "clipart":
        return CLIPART_ROOT.is_dir()
    return name in BUILDERS


def training_classes(classes: list[str]) -> list[str]:
    """The classes the imagefolder reader puts in the train split (the first alphabetical half)."""
    ordered = sorted(classes)
    return ordered[: (len(ordered) + 1) // 2]


def held_out_classes(classes: list[str], split: str) -> list[str]:
    """The classes evaluated under ``split``: test classes, or validation classes carved from training ones."""
    if split == "test":
        return sorted(set(classes) - set(training_classes(classes)))
    if split == "val":
        train = training_classes(classes)
        return sorted(set(train) - set(training_classes(train)))
    raise ValueError(f"split must be 'test' or 'val', got {split!r}")


def write_task(root: Path, name: str, per_class: int, *, split: str = "test") -> dict[str, int]:
    """Write task ``name`` under ``root/name``; with ``split="val"`` only its training classes.

    Under ``"val"`` the written folder holds the training classes only, and ``grappa``'s class
    halves split them again into training and validation classes.
    """
    samples = BUILDERS[name](per_class, split)
    if split == "val" and name not in ALL_TEST:
        keep = set(training_classes(list(samples)))
        samples = {c: v for c, v in samples.items() if c in keep}
    counts = {}
    for label, images in samples.items():
        for i, img in enumerate(images):
            img = _on_white(img) if isinstance(img, str) else img
            _save(img, root / name / label / f"{i:03d}.png")
        counts[label] = len(images)
    return counts
