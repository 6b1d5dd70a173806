"""Any ``ROOT/<class>/<image>`` tree, ``ROOT/{train,test}/<class>/<image>``, and flat folders.

Class folders are the visible sub-folders of ``ROOT`` (names starting with ``.`` are
ignored); their images are found recursively. Only files with an image extension count;
anything else (README, .DS_Store, annotation files) is skipped. Class folders without any
image are left out and reported in ``info["empty_classes"]``.

Many datasets come already split: ``ROOT`` holds exactly a ``train`` and a ``test`` folder
(any case), each with class folders. With ``layout = "auto"`` (the default) those two folders
are the two splits, not two classes, and ``info["note"]`` says so; ``layout = "classes"``
reads every sub-folder of ``ROOT`` as a class whatever its name. ``split = "all-test"`` /
``"all-train"`` pool both folders into one split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.data.tasks.reader import BaseReader
from grappa_cli.data.tasks.split import Sample, class_halves, finish, image_list
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


#: Folder names (lower case) read as the training and the test split under ``layout = "auto"``.
TRAIN_FOLDER, TEST_FOLDER = "train", "test"
LAYOUTS = ("auto", "classes")


def split_folders(root: Path) -> tuple[Path, Path] | None:
    """``(ROOT/train, ROOT/test)`` when these are the only visible sub-folders of ``root``."""
    folders = {e.name.lower(): Path(e.path) for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
    if set(folders) == {TRAIN_FOLDER, TEST_FOLDER}:
        return folders[TRAIN_FOLDER], folders[TEST_FOLDER]
    return None


def class_samples(root: Path) -> tuple[list[Sample], list[str]]:
    """Images of every class folder under ``root``, and the names of the empty class folders."""
    samples: list[Sample] = []
    empty: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        images = list_images(Path(entry.path))
        if not images:
            empty.append(entry.name)
        samples += [Sample(path, entry.name) for path in images]
    return samples, empty


def _no_images(root: Path) -> DataError:
    loose = sum(1 for e in os.scandir(root) if e.is_file() and is_image_file(e.name))
    extra = (
        f"; {loose} images lie directly in it (an unlabeled folder can be listed in data.train as a path)"
        if loose
        else ""
    )
    return DataError(
        f"no images in class folders under {root}: expected {root}/<class>/<image> with one of the "
        f"extensions {', '.join(IMAGE_EXTENSIONS)}{extra}",
        hint="check the root",
    )


class ImageFolderTask(BaseReader):
    name = "imagefolder"
    description = (
        "any ROOT/<class>/<image> tree, or ROOT/train + ROOT/test class trees read as the two splits "
        "(options: split = classes | all-test | all-train; layout = auto | classes)"
    )
    options = {
        **BaseReader.options,
        "layout": ("auto", "auto: ROOT/train + ROOT/test (the only sub-folders) are the two splits; "
                           "classes: every sub-folder of ROOT is a class"),
    }

    def read(self, root: Path, **options: Any) -> TaskSplits:
        root = _check_dir(root)
        layout = options["layout"]
        if layout not in LAYOUTS:
            raise DataError(f"task type {self.name!r}: layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
        folders = split_folders(root) if layout == "auto" else None
        if folders is not None:
            return self._read_split_folders(root, *folders, split=options["split"])
        samples, empty = class_samples(root)
        if not samples:
            raise _no_images(root)
        return class_halves(
            self.name,
            samples,
            root=root,
            split=options["split"],
            info={"empty_classes": empty} if empty else None,
        )

    def _read_split_folders(self, root: Path, train_dir: Path, test_dir: Path, *, split: str) -> TaskSplits:
        """``train/`` and ``test/`` as the two splits (their classes may overlap: labels are per split)."""
        train_samples, train_empty = class_samples(train_dir)
        test_samples, test_empty = class_samples(test_dir)
        for folder, samples in ((train_dir, train_samples), (test_dir, test_samples)):
            if not samples:
                raise _no_images(folder)
        info: dict[str, Any] = {
            "note": f"{train_dir.name}/ and {test_dir.name}/ read as the train and test splits "
                    '(layout = "classes" reads them as two classes)',
        }
        empty = [f"{train_dir.name}/{c}" for c in train_empty] + [f"{test_dir.name}/{c}" for c in test_empty]
        if empty:
            info["empty_classes"] = empty
        if split != "classes":
            return class_halves(self.name, train_samples + test_samples, root=root, split=split, info=info)
        shared = sorted({s.label for s in train_samples} & {s.label for s in test_samples})
        if shared:
            info["shared_classes"] = shared
        return finish(self.name, image_list(train_samples), image_list(test_samples), root=root,
                      info={"split": split, **info})
