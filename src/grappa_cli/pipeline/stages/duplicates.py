"""Test images that are also training images: byte copies and near-duplicates.

grappa trains on unlabeled images of the very tasks it evaluates. A test image that also sits
in the training set (a copy, a renamed or re-encoded file) has been seen by the adaptation,
so its retrieval numbers are inflated. The check compares each test image's backbone feature
with its nearest training feature (exact inner product with faiss on the stored,
L2-normalised features: seconds, no pass over the images):

* **identical**: cosine 1 (to float16 storage): the same pixels, so the same bytes or a
  lossless re-encoding;
* **near**: cosine at least ``[data] duplicate_threshold``. The default was measured with
  ``benchmarks/duplicates_threshold.py`` on real image collections: re-encoded and resized
  copies score above it, and distinct images of one class almost never do
  (``docs/benchmarks.md``, "Duplicate check").

The result is stored in the test split's features record (``features/test/<task>``, field
``duplicates``) with the fingerprints of both feature sets and the threshold it was computed
with, so it is recomputed only when one of them changes. ``[data] on_duplicates`` decides what
evaluation does with the flagged test images: ``warn`` (keep them, say so), ``drop`` (leave
them out of the queries and of the gallery) or ``error`` (refuse to evaluate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypedDict

import numpy as np

from grappa_cli.errors import DataError
from grappa_cli.records import artifacts

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.console import Reporter
    from grappa_cli.storage.store import Store

TRAIN_KEY = artifacts.FEATURES_TRAIN
#: cosine at or above which two stored features count as the same pixels (identical inputs give
#: identical float16 features; the float32 dot product of their normalised forms is 1 to ~1e-7)
IDENTICAL = 0.99999
#: example pairs kept in the record and shown in messages
EXAMPLES = 5


class DuplicateRecord(TypedDict):
    """The ``duplicates`` field of a test split's features record."""

    threshold: float
    train: str  # fingerprint of the training features compared
    test: str  # fingerprint of the test features compared
    count: int
    identical: int
    test_rows: list[int]
    train_rows: list[int]
    cosines: list[float]
    examples: list[list[str | float]]  # [test path, training path, cosine]


class RowNames(Protocol):
    """The paths of a features group, indexed by stored row."""

    def __getitem__(self, row: int, /) -> object: ...


@dataclass
class DuplicateCheck:
    """The test images of one task that duplicate training images."""

    task: str
    threshold: float
    #: test rows (of ``features/test/<task>``) flagged, with their nearest training row and cosine
    test_rows: list[int] = field(default_factory=list)
    train_rows: list[int] = field(default_factory=list)
    cosines: list[float] = field(default_factory=list)
    #: ``(test path, training path, cosine)`` of the most similar pairs
    examples: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.test_rows)

    @property
    def identical(self) -> int:
        return sum(c >= IDENTICAL for c in self.cosines)

    def line(self) -> str:
        """``cub: 12 test images duplicate training images (3 identical, 9 near: cosine >= 0.93)``."""
        if not self.count:
            return f"{self.task}: no test image duplicates a training image"
        near = self.count - self.identical
        return (f"{self.task}: {self.count} test image{'s' if self.count != 1 else ''} duplicate"
                f"{'' if self.count != 1 else 's'} training images ({self.identical} identical, {near} near: "
                f"cosine >= {self.threshold:g})")

    def example_lines(self) -> list[str]:
        return [f"  {test} = {train} (cosine {cos:.3f})" for test, train, cos in self.examples]

    def to_record(self, train_fp: str, test_fp: str) -> DuplicateRecord:
        return {"threshold": self.threshold, "train": train_fp, "test": test_fp, "count": self.count,
                "identical": self.identical, "test_rows": self.test_rows, "train_rows": self.train_rows,
                "cosines": [round(c, 5) for c in self.cosines], "examples": [list(e) for e in self.examples]}

    @classmethod
    def from_record(cls, task: str, record: DuplicateRecord) -> DuplicateCheck:
        return cls(task, float(record["threshold"]), [int(r) for r in record["test_rows"]],
                   [int(r) for r in record["train_rows"]], [float(c) for c in record["cosines"]],
                   [(str(a), str(b), float(c)) for a, b, c in record.get("examples", [])])


def nearest_training(train: np.ndarray, test: np.ndarray, *, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """For each test row, its most similar training row and their cosine (exact, faiss inner product).

    Both inputs are raw features; they are L2-normalised here. The training set is searched in
    blocks so that its float32 copy never needs more than ``block`` rows at once.
    """
    import faiss

    test = _normalised(test)
    best = np.full(len(test), -np.inf, dtype=np.float32)
    where = np.full(len(test), -1, dtype=np.int64)
    if not len(test) or not len(train):
        return where, best
    for start in range(0, len(train), block):
        part = _normalised(train[start:start + block])
        index = faiss.IndexFlatIP(part.shape[1])
        index.add(part)
        sims, ids = index.search(test, 1)
        better = sims[:, 0] > best
        best[better] = sims[better, 0]
        where[better] = ids[better, 0] + start
    return where, best


def find(task: str, train: np.ndarray, train_rows: np.ndarray, train_paths: RowNames, test: np.ndarray,
         test_rows: np.ndarray, test_paths: RowNames, threshold: float) -> DuplicateCheck:
    """Flag the test rows whose nearest training feature has cosine >= ``threshold``.

    ``train_rows`` / ``test_rows`` number the given features as the store does (valid rows only);
    the path lookups are indexed by those numbers.
    """
    nearest, cosines = nearest_training(train, test)
    flagged = np.flatnonzero(cosines >= threshold)
    flagged = flagged[np.argsort(-cosines[flagged], kind="stable")]
    check = DuplicateCheck(task, float(threshold), [int(test_rows[i]) for i in flagged],
                           [int(train_rows[nearest[i]]) for i in flagged], [float(cosines[i]) for i in flagged])
    check.examples = [(str(test_paths[t]), str(train_paths[r]), c)
                      for t, r, c in zip(check.test_rows[:EXAMPLES], check.train_rows[:EXAMPLES],
                                         check.cosines[:EXAMPLES], strict=True)]
    return check


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# -- stored results ---------------------------------------------------------------------------


def _inputs(store: Store, task: str) -> tuple[str, str] | None:
    """The fingerprints of the complete training and test features, or None when one is missing."""
    train, test = store.provenance(TRAIN_KEY), store.provenance(artifacts.test_features(task))
    if not (train and train.get("complete") and test and test.get("complete")):
        return None
    return str(train.get("fingerprint")), str(test.get("fingerprint"))


def stored(store: Store, config: GrappaConfig, task: str) -> DuplicateCheck | None:
    """The stored check of ``task`` when it is current (same features, same threshold); reads no array."""
    inputs = _inputs(store, task)
    record = (store.provenance(artifacts.test_features(task)) or {}).get("duplicates")
    if inputs is None or not record:
        return None
    if (record.get("train"), record.get("test")) != inputs or record.get("threshold") != threshold_of(config):
        return None
    return DuplicateCheck.from_record(task, record)


class TrainingFeatures:
    """The training features, read from the store once however many test splits are checked."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._read: tuple[np.ndarray, np.ndarray] | None = None

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        if self._read is None:
            from grappa_cli.pipeline.stages.embed import read_embeddings

            self._read = read_embeddings(self.store, TRAIN_KEY)
        return self._read


def check(store: Store, config: GrappaConfig, task: str,
          training: TrainingFeatures | None = None) -> DuplicateCheck | None:
    """The current check of ``task``: the stored one, or computed now and stored.

    None when the training features or the task's test features are not complete yet.
    ``training`` shares one read of the training features between tasks.
    """
    from grappa_cli.pipeline.stages.embed import read_embeddings

    current = stored(store, config, task)
    if current is not None:
        return current
    inputs = _inputs(store, task)
    if inputs is None:
        return None
    key = artifacts.test_features(task)
    train, train_rows = (training or TrainingFeatures(store)).get()
    test, test_rows = read_embeddings(store, key)
    result = find(task, train, train_rows, _LazyPaths(store, TRAIN_KEY), test, test_rows,
                  _LazyPaths(store, key), threshold_of(config))
    store.update(key, duplicates=result.to_record(*inputs))
    return result


def threshold_of(config: GrappaConfig) -> float:
    return float(config.data.duplicate_threshold)


def rows_to_leave_out(store: Store, config: GrappaConfig, task: str) -> list[int]:
    """Test rows evaluation leaves out: the flagged ones under ``on_duplicates = "drop"``, else none.

    Under ``"error"`` a task with duplicates raises, naming them and the ways out.
    """
    policy = config.data.on_duplicates
    if policy == "warn":
        return []
    result = check(store, config, task)
    if result is None or not result.count:
        return []
    if policy == "error":
        example = f"; e.g. {result.examples[0][0]} = {result.examples[0][1]}" if result.examples else ""
        raise DataError(f"{result.line()}{example}",
                        hint="remove them from the test folder, or set [data] on_duplicates = \"drop\" "
                             "(leave them out of evaluation) or \"warn\" in grappa.toml")
    return sorted(result.test_rows)


def left_out_params(rows: list[int]) -> dict[str, object]:
    """What a result records about the test rows it left out (``{}`` when none): part of its parameters,
    so that ``grappa eval``, ``status`` and ``run`` (the planner) judge a result the same way."""
    from grappa_cli.records import provenance as prov

    return {"left_out": {"duplicates": prov.fingerprint(rows), "count": len(rows)}} if rows else {}


def planned_left_out(store: Store | None, config: GrappaConfig, task: str) -> dict[str, object] | None:
    """:func:`left_out_params` as the planner sees them, from the stored check only (it computes nothing).

    None when ``on_duplicates = "drop"`` but the check is not stored yet (a project extracted
    before the check existed): evaluation will compute it, so the results are to be redone.
    """
    if config.data.on_duplicates != "drop":
        return {}
    if store is None:
        return None
    found = stored(store, config, task)
    if found is None:
        return None
    return left_out_params(sorted(found.test_rows))


class _LazyPaths:
    """The ``paths`` array of a features group, read only when an example needs a name."""

    def __init__(self, store: Store, key: str) -> None:
        self.store, self.key = store, key
        self._paths: np.ndarray | None = None

    def __getitem__(self, row: int) -> str:
        if self._paths is None:
            self._paths = self.store.read(f"{self.key}/paths")
        return str(self._paths[row])


def check_tasks(store: Store, config: GrappaConfig, tasks: list[str],
                reporter: Reporter | None = None) -> list[DuplicateCheck]:
    """Check every task whose test features are complete; say what was found through ``reporter``."""
    from rich.markup import escape

    results = []
    training = TrainingFeatures(store)
    for task in tasks:
        result = check(store, config, task, training)
        if result is None:
            continue
        results.append(result)
        if result.count and reporter is not None:
            policy = config.data.on_duplicates
            then = {"warn": "evaluation keeps them ([data] on_duplicates = \"warn\")",
                    "drop": "evaluation leaves them out ([data] on_duplicates = \"drop\")",
                    "error": "evaluation refuses the task until they are removed ([data] on_duplicates = "
                             "\"error\")"}[policy]
            reporter.log(f"[yellow]Warning:[/yellow] {escape(result.line())}; {escape(then)}")
            for line in result.example_lines():
                reporter.log(escape(line))
    return results
