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

from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.data.tasks.reader import BaseReader
from grappa_cli.data.tasks.split import Sample, class_halves, finish, image_list
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
    seen.discard(folder_key(directory))
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


#: Folder names (lower case) read as the training and the test split under ``layout = "auto"``.
TRAIN_FOLDER, TEST_FOLDER = "train", "test"
LAYOUTS = ("auto", "classes")


def split_folders(root: Path) -> tuple[Path, Path] | None:
    """``(ROOT/train, ROOT/test)`` when these are the only visible sub-folders of ``root``."""
    folders = {e.name.lower(): Path(e.path) for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
    if set(folders) == {TRAIN_FOLDER, TEST_FOLDER}:
        return folders[TRAIN_FOLDER], folders[TEST_FOLDER]
    return None


def class_samples(root: Path, avoid: set[tuple[int, int]] | None = None) -> tuple[list[Sample], list[str]]:
    """Images of every class folder under ``root``, and the names of the empty class folders.

    Each class folder is walked once by ``(st_dev, st_ino)``; a link from one class folder into
    ``root``, another class folder or a folder in ``avoid`` is cut, and the folders cut are
    reported in one warning.
    """
    samples: list[Sample] = []
    empty: list[str] = []
    classes = [e for e in sorted(os.scandir(root), key=lambda e: e.name)
               if not e.name.startswith(".") and e.is_dir()]
    keys = {k for k in (folder_key(root), *(folder_key(e.path) for e in classes)) if k is not None}
    keys |= set(avoid or ())
    skipped: list[str] = []
    for entry in classes:
        images, loops = walk_images(Path(entry.path), avoid=keys)
        skipped += loops
        if not images:
            empty.append(entry.name)
        samples += [Sample(path, entry.name) for path in images]
    warn_skipped(root, skipped)
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

    def read(self, root: Path, **options: object) -> TaskSplits:
        root = _check_dir(root)
        layout = options.get("layout", "auto")
        if layout not in LAYOUTS:
            raise DataError(f"task type {self.name!r}: layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
        folders = split_folders(root) if layout == "auto" else None
        if folders is not None:
            return self._read_split_folders(root, *folders, split=self.split_of(options))
        samples, empty = class_samples(root)
        if not samples:
            raise _no_images(root)
        return class_halves(
            self.name,
            samples,
            root=root,
            split=self.split_of(options),
            info={"empty_classes": empty} if empty else None,
        )

    def _read_split_folders(self, root: Path, train_dir: Path, test_dir: Path, *, split: str) -> TaskSplits:
        """``train/`` and ``test/`` as the two splits (their classes may overlap: labels are per split)."""
        outer = {k for k in (folder_key(root), folder_key(train_dir), folder_key(test_dir)) if k is not None}
        train_samples, train_empty = class_samples(train_dir, avoid=outer)
        test_samples, test_empty = class_samples(test_dir, avoid=outer)
        for folder, samples in ((train_dir, train_samples), (test_dir, test_samples)):
            if not samples:
                raise _no_images(folder)
        info: dict[str, object] = {
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
