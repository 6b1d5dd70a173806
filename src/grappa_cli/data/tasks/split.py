"""The deep-metric-learning split: classes sorted alphabetically, first half train, rest test.

Section 4.1 of the paper: "for each dataset, assign the first half of the classes (ordered
alphabetically) for training and the second half for testing", after pooling every
official split of the dataset. With an odd number of classes the training half gets the
extra class (Food-101: 101 classes -> 51 train, 50 test, as in Table 1).

"Alphabetically" is Python's ``sorted`` over the class names the dataset defines (code-point
order, so upper case sorts before lower case). Within a split, images are ordered by class
then path, so every listing is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grappa_cli.data.tasks.base import ImageList, TaskSplits
from grappa_cli.errors import DataError

#: Values of the ``split`` option shared by every class-halves task.
SPLIT_CHOICES = ("classes", "all-test", "all-train")


@dataclass(frozen=True)
class Sample:
    """One image and the name of its class, as a dataset lists it."""

    path: str
    label: str


def image_list(samples: Iterable[Sample], classes: Sequence[str] | None = None) -> ImageList:
    """An :class:`ImageList` over ``classes`` (default: the samples' classes, sorted)."""
    samples = list(samples)
    names = list(classes) if classes is not None else sorted({s.label for s in samples})
    position = {name: i for i, name in enumerate(names)}
    ordered = sorted(samples, key=lambda s: (position[s.label], s.path))
    labels = np.fromiter((position[s.label] for s in ordered), dtype=np.int64, count=len(ordered))
    return ImageList(paths=[s.path for s in ordered], labels=labels, classes=names)


def unique_samples(samples: Iterable[Sample], *, source: str) -> list[Sample]:
    """Drop exact repeats of (path, class); a path listed under two classes is an error."""
    seen: dict[str, str] = {}
    out: list[Sample] = []
    for sample in samples:
        previous = seen.get(sample.path)
        if previous is None:
            seen[sample.path] = sample.label
            out.append(sample)
        elif previous != sample.label:
            raise DataError(
                f"{source} lists {sample.path} under two classes ({previous!r} and {sample.label!r})",
                hint="fix the annotation files",
            )
    return out


def class_halves(
    name: str,
    samples: Iterable[Sample],
    *,
    root: Path,
    split: str = "classes",
    info: Mapping[str, object] | None = None,
) -> TaskSplits:
    """The paper's DML split of pooled samples (or everything in one split, see ``split``).

    ``split``: ``"classes"`` (alphabetical halves, default), ``"all-test"`` (every image is
    test, no training images) or ``"all-train"`` (every image is training, no test split).
    """
    samples = unique_samples(samples, source=f"the {name} dataset at {root}")
    if not samples:
        raise DataError(f"the {name} dataset at {root} lists no image", hint="check the dataset root")
    classes = sorted({s.label for s in samples})
    if split == "classes":
        if len(classes) < 2:
            raise DataError(
                f"the {name} dataset at {root} has {len(classes)} class; the class split needs at least 2",
                hint='use split = "all-test" or "all-train"',
            )
        n_train = (len(classes) + 1) // 2
        train_classes, test_classes = classes[:n_train], classes[n_train:]
    elif split == "all-test":
        train_classes, test_classes = [], classes
    elif split == "all-train":
        train_classes, test_classes = classes, []
    else:
        raise DataError(
            f"task {name}: unknown split {split!r}", hint=f"use one of {', '.join(SPLIT_CHOICES)}"
        )
    train_set = set(train_classes)
    train = image_list((s for s in samples if s.label in train_set), train_classes)
    test = (
        image_list((s for s in samples if s.label not in train_set), test_classes) if test_classes else None
    )
    return finish(name, train, test, root=root, info={"split": split, **(info or {})})


def finish(
    name: str,
    train: ImageList,
    test: ImageList | None,
    *,
    root: Path,
    info: Mapping[str, object] | None = None,
) -> TaskSplits:
    """Wrap splits with the facts users and stages report: counts and singleton test classes.

    A test class with a single image gives no leave-one-out query (nothing else to find),
    but its image still competes in the other queries' rankings, so it is kept and listed
    in ``info["singleton_test_classes"]`` for the caller to warn about.
    """
    details: dict[str, object] = {"root": str(root), **(info or {})}
    details["train_classes"] = len(train.classes)
    details["train_images"] = len(train)
    if test is not None:
        counts: np.ndarray | list[int] = (
            np.bincount(test.labels, minlength=len(test.classes)) if test.labels is not None else []
        )
        details["test_classes"] = len(test.classes)
        details["test_images"] = len(test)
        details["singleton_test_classes"] = [test.classes[i] for i, c in enumerate(counts) if c == 1]
    return TaskSplits(name=name, train=train, test=test, info=details)


def check_files_exist(paths: Sequence[str], *, dataset: str, root: Path) -> None:
    """Fail with the first missing image when a dataset's listing names absent files."""
    import os

    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(paths)} images the {dataset} dataset lists are missing, "
            f"e.g. {missing[0]}",
            hint=f"re-extract the dataset under {root}",
        )
