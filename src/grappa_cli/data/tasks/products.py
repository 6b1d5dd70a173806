"""Stanford Online Products (Oh Song et al., 2016), with its official train/test files.

Layout (the ``Stanford_Online_Products`` folder of the official archive)::

    Stanford_Online_Products/
      Ebay_train.txt   header "image_id class_id super_class_id path", then one line per image
      Ebay_test.txt    same format
      bicycle_final/111085122871_0.JPG ...

Products is the one MRT dataset whose DML split is its official one: ``Ebay_train.txt``
holds classes 1-11,318 (59,551 images) and ``Ebay_test.txt`` classes 11,319-22,634 (60,502
images), as in Table 1. Classes are the ``class_id`` values (named by their number, ordered
numerically).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.data.tasks.layout import Layout, locate
from grappa_cli.data.tasks.reader import BaseReader
from grappa_cli.data.tasks.split import Sample, check_files_exist, finish, image_list
from grappa_cli.errors import DataError

LAYOUT = Layout(
    "Stanford Online Products",
    ("Stanford_Online_Products",),
    ("Ebay_train.txt", "Ebay_test.txt"),
    any_name=True,
)
HEADER = ["image_id", "class_id", "super_class_id", "path"]


def read_ebay_file(path: Path, directory: Path) -> list[Sample]:
    """The images listed by ``Ebay_train.txt`` or ``Ebay_test.txt`` with their class ids."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not lines or lines[0].split() != HEADER:
        raise DataError(
            f"{path} line 1: expected the header {' '.join(HEADER)!r}",
            hint="give the original Stanford_Online_Products folder",
        )
    samples = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4 or not fields[1].isdigit():
            raise DataError(
                f"{path} line {number}: expected '<image_id> <class_id> <super_class_id> <path>', "
                f"got {line!r}",
                hint="re-extract the dataset archive",
            )
        samples.append(Sample(str(directory / fields[3]), fields[1]))
    return samples


def _by_number(samples: list[Sample]) -> list[str]:
    return sorted({s.label for s in samples}, key=int)


class ProductsTask(BaseReader):
    name = "products"
    description = "Stanford Online Products, official split (MRT; Table 1: 11,318/11,316 classes)"
    options: ClassVar[dict[str, tuple[object, str]]] = {
        "split": ("official", "official (Ebay_train.txt / Ebay_test.txt), all-test or all-train"),
    }
    split_choices = ("official", "all-test", "all-train")

    def read(self, root: Path, **options: object) -> TaskSplits:
        directory = locate(root, LAYOUT).directory
        train = read_ebay_file(directory / "Ebay_train.txt", directory)
        test = read_ebay_file(directory / "Ebay_test.txt", directory)
        check_files_exist([s.path for s in train + test], dataset="Stanford Online Products", root=directory)
        shared = {s.label for s in train} & {s.label for s in test}
        if shared:
            raise DataError(
                f"Ebay_train.txt and Ebay_test.txt in {directory} share {len(shared)} class ids "
                f"(e.g. {min(shared, key=int)})",
                hint="give the original Stanford_Online_Products files",
            )
        split = self.split_of(options)
        if split == "all-test":
            train, test = [], train + test
        elif split == "all-train":
            train, test = train + test, []
        train_list = image_list(train, _by_number(train))
        test_list = image_list(test, _by_number(test)) if test else None
        return finish(
            self.name,
            train_list,
            test_list,
            root=directory,
            info={"split": split, "layout": "Stanford_Online_Products"},
        )
