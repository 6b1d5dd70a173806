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


def folder_key(path: str | Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of a folder (links followed), None when it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def walk_images(
    directory: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, avoid: set[tuple[int, int]] | None = None,
) -> tuple[list[str], list[str]]:
    """Image files below ``directory`` (links followed, each real folder visited once), sorted,
    and the linked folders skipped because they were already visited (symlink loops and
    duplicate links).

    A folder is known by ``(st_dev, st_ino)``: a link back to an ancestor would otherwise be
    walked forever, and a second link to the same folder would list its images twice.
    ``avoid`` holds folders never to enter below ``directory`` (a dataset root and its other
    class folders, so a link cannot file one class's images under another).
    """
    found: list[str] = []
    skipped: list[str] = []
    seen: set[tuple[int, int]] = set(avoid or ())
    seen.discard(folder_key(directory))  # type: ignore[arg-type]
    stack = [str(directory)]
    while stack:
        current = stack.pop()
        key = folder_key(current)
        if key is None:
            continue
        if key in seen:
            skipped.append(current)
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                continue
            if is_dir:
                subdirs.append(entry.path)
            elif entry.name.lower().endswith(extensions):
                found.append(entry.path)
        stack.extend(reversed(subdirs))
    return sorted(found), skipped


def list_images(directory: Path) -> list[str]:
    """Every image file below ``directory`` (recursively, links followed, loops cut), sorted by path.

    Folders reached twice (a symlink loop, or two links to one folder) are walked once and
    reported as a :class:`~grappa_cli.errors.GrappaWarning`.
    """
    found, skipped = walk_images(Path(directory))
    warn_skipped(directory, skipped)
    return found


def warn_skipped(directory: Path, skipped: list[str]) -> None:
    """One warning naming the folders walked once only (shown as ``Warning: ...`` by the CLI)."""
    if not skipped:
        return
    import warnings

    from grappa_cli.errors import GrappaWarning

    shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    warnings.warn(GrappaWarning(
        f"{directory}: {len(skipped)} linked folder(s) lead to a folder already listed (symlink loop or "
        f"duplicate link), listed once: {shown}"), stacklevel=2)


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
        classes = [e for e in sorted(os.scandir(root), key=lambda e: e.name)
                   if not e.name.startswith(".") and e.is_dir()]
        avoid = {k for k in (folder_key(root), *(folder_key(e.path) for e in classes)) if k is not None}
        skipped: list[str] = []
        for entry in classes:
            images, loops = walk_images(Path(entry.path), avoid=avoid)
            skipped += loops
            if not images:
                empty.append(entry.name)
            samples += [Sample(path, entry.name) for path in images]
        warn_skipped(root, skipped)
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
