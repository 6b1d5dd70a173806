"""Any ``ROOT/<class>/<image>`` tree, and flat folders of unlabeled images.

Class folders are the visible sub-folders of ``ROOT`` (names starting with ``.`` are
ignored); their images are found recursively. Only files with an image extension count;
anything else (README, .DS_Store, annotation files) is skipped. Class folders without any
image are left out and reported in ``info["empty_classes"]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.data.tasks.reader import BaseReader
from grappa_cli.data.tasks.split import Sample, class_halves
from grappa_cli.errors import DataError

#: Extensions (lower case) of the files treated as images; the list torchvision uses.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(directory: Path) -> list[str]:
    """Every image file below ``directory`` (recursively, links followed), sorted by path."""
    found: list[str] = []
    for current, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(current, f) for f in files if is_image_file(f))
    return sorted(found)


def _check_dir(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist", hint="check the path given as root")
    if not root.is_dir():
        raise DataError(
            f"image folder {root} is not a directory", hint="give a folder of <class>/<image> files"
        )
    return root.resolve()


class ImageFolderTask(BaseReader):
    name = "imagefolder"
    description = "any ROOT/<class>/<image> tree (split option: classes, all-test or all-train)"

    def read(self, root: Path, **options: Any) -> TaskSplits:
        root = _check_dir(root)
        samples: list[Sample] = []
        empty: list[str] = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            images = list_images(Path(entry.path))
            if not images:
                empty.append(entry.name)
            samples += [Sample(path, entry.name) for path in images]
        if not samples:
            loose = sum(1 for e in os.scandir(root) if e.is_file() and is_image_file(e.name))
            extra = (
                (
                    f"; {loose} images lie directly in it (an unlabeled folder can be listed in data.train "
                    "as a path)"
                )
                if loose
                else ""
            )
            raise DataError(
                f"no images in class folders under {root}: expected {root}/<class>/<image> with one of the "
                f"extensions {', '.join(IMAGE_EXTENSIONS)}{extra}",
                hint="check the root",
            )
        return class_halves(
            self.name,
            samples,
            root=root,
            split=options["split"],
            info={"empty_classes": empty} if empty else None,
        )
