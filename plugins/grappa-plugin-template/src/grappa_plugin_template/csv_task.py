"""A task read from a CSV listing: ``path,label,split`` with split ``train`` or ``test``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from grappa_cli.data.tasks.base import ImageList, TaskSplits
from grappa_cli.errors import DataError


def read_listing(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Rows of the listing grouped by split; paths are resolved against the file's directory."""
    if not path.is_file():
        raise DataError(f"{path} does not exist", hint="give the CSV file as the task root")
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path} lacks the column(s) {', '.join(sorted(missing))}",
                            hint="the header must be path,label,split")
        for line, row in enumerate(reader, start=2):
            if row["split"] not in splits:
                raise DataError(f"{path}:{line}: split must be train or test (got {row['split']!r})")
            image = Path(row["path"])
            splits[row["split"]].append((str(image if image.is_absolute() else path.parent / image), row["label"]))
    return splits


def _image_list(rows: list[tuple[str, str]]) -> ImageList:
    import numpy as np

    classes = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(classes)}
    return ImageList([p for p, _ in rows], np.array([index[label] for _, label in rows], dtype=np.int64), classes)


class CsvListTask:
    name = "csv-list"
    description = "images listed in a CSV file (path,label,split)"

    def load(self, root: Path, **options: Any) -> TaskSplits:
        if options:
            raise DataError(f"csv-list takes no options (got {', '.join(options)})")
        splits = read_listing(Path(root))
        test = _image_list(splits["test"]) if splits["test"] else None
        return TaskSplits(self.name, _image_list(splits["train"]), test)
