"""CUB-200-2011 (Caltech-UCSD Birds), read from its own files.

Layout (the ``CUB_200_2011`` folder of the official archive)::

    CUB_200_2011/
      images.txt              <image_id> <relative path>       e.g. 1 001.Black_footed_Albatross/x.jpg
      image_class_labels.txt  <image_id> <class_id>
      classes.txt             <class_id> <class name>           e.g. 1 001.Black_footed_Albatross
      images/<relative path>

Classes are named as ``classes.txt`` names them; their numeric prefix makes the alphabetical
order the official one, so the split is classes 1-100 / 101-200 (Table 1: 5,864 / 5,924
images). ``train_test_split.txt`` is not needed: the DML split pools every image.
"""

from __future__ import annotations

from pathlib import Path

from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.data.tasks.layout import Layout, locate
from grappa_cli.data.tasks.reader import BaseReader
from grappa_cli.data.tasks.split import Sample, check_files_exist, class_halves
from grappa_cli.errors import DataError

LAYOUT = Layout(
    "CUB-200-2011",
    ("CUB_200_2011",),
    ("images.txt", "image_class_labels.txt", "classes.txt", "images/"),
    any_name=True,
)


def read_id_table(path: Path) -> dict[str, str]:
    """``<id> <value>`` lines as a dict; a malformed or repeated line names file and line."""
    table: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not value.strip():
            raise DataError(
                f"{path} line {number}: expected '<id> <value>', got {line!r}",
                hint="re-extract the dataset archive",
            )
        if key in table:
            raise DataError(
                f"{path} line {number}: id {key} appears twice", hint="re-extract the dataset archive"
            )
        table[key] = value.strip()
    return table


class CUBTask(BaseReader):
    name = "cub"
    description = "CUB-200-2011 birds (MRT; Table 1: 100/100 classes, 5,864/5,924 images)"

    def read(self, root: Path, **options: object) -> TaskSplits:
        directory = locate(root, LAYOUT).directory
        images = read_id_table(directory / "images.txt")
        image_class = read_id_table(directory / "image_class_labels.txt")
        classes = read_id_table(directory / "classes.txt")
        samples = []
        for image_id, relative in images.items():
            class_id = image_class.get(image_id)
            if class_id is None:
                raise DataError(
                    f"image id {image_id} of {directory / 'images.txt'} has no line in "
                    f"{directory / 'image_class_labels.txt'}",
                    hint="re-extract the dataset archive",
                )
            if class_id not in classes:
                raise DataError(
                    f"class id {class_id} of {directory / 'image_class_labels.txt'} is not in "
                    f"{directory / 'classes.txt'}",
                    hint="re-extract the dataset archive",
                )
            samples.append(Sample(str(directory / "images" / relative), classes[class_id]))
        check_files_exist([s.path for s in samples], dataset="CUB-200-2011", root=directory)
        return class_halves(
            self.name, samples, root=directory, split=self.split_of(options), info={"layout": "CUB_200_2011"}
        )
