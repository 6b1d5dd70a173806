"""Stored evaluation results: reading them, naming and ordering models, and the oracle.

``grappa eval`` writes one JSON file per (model, task) under ``results/<model dirname>/``;
everything shown afterwards (the eval table, ``grappa report``) is derived from these
files, never recomputed. The oracle O of Table 2 (section 4.2) is such a derivation: per
task, the single adaptor set M + P_i whose *test* metric is best. It uses the test labels
to choose, so it is a reference, not a method.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grappa_cli.errors import StoreError

#: The metrics of Table 2: (key in the results file, column title).
TABLE_METRICS: tuple[tuple[str, str], ...] = (("r_precision", "RP"), ("map@r", "mAP"))
#: Default metric the oracle selects on, then the tie-break.
ORACLE_METRIC = "r_precision"
ORACLE_TIEBREAK = "map@r"

#: Display names of the fusion strategies the paper reports (Table 2).
FUSED_NAMES = {
    "fused:single-random": "M + A1",
    "fused:random": "M* (random)",
    "fused:avg": "Grappa-avg",
    "fused:transform": "Grappa-T",
    "fused:neighbor": "Grappa-N",
    "fused:route": "Grappa-R",
}
#: Sections of Table 2, in order.
SECTIONS = (
    ("backbone", "Backbone"),
    ("baselines", "Results without pseudo-granularity adaptors"),
    ("single", "Results using only a single set of pseudo-granularity adaptors"),
    ("fused", "Results using pseudo-granularity adaptors and fusion (M*)"),
    ("labels", "References that use class labels (not comparable)"),
)
_FUSED_ORDER = ("fused:avg", "fused:transform", "fused:neighbor", "fused:route")
#: The fused model a project uses when none is named (``run``, ``demo``, ``export``, ``index``,
#: ``search``, the report's default row): the first of these it has, else the backbone.
#: Grappa-avg first: on the large validation tasks (three seeds, ``quality.py --size large``) it
#: was the best fused model (64.6 RP against 64.1 for Grappa-N), no label-free choice of
#: granularity beat it (docs/benchmarks.md), and it needs no training of its own. A project that
#: trains only another strategy uses that one.
DEFAULT_MODEL_ORDER = ("fused:avg", "fused:neighbor", "fused:route", "fused:transform")


def default_of(models: Iterable[str]) -> str:
    """The default model among ``models`` (names such as ``fused:route``): see :data:`DEFAULT_MODEL_ORDER`."""
    present = set(models)
    return next((name for name in DEFAULT_MODEL_ORDER if name in present), "backbone")


@dataclass
class StoredResult:
    """One ``results/<model>/<task>.json`` file."""

    model: str
    task: str
    metrics: dict[str, float]
    num_queries: int
    num_skipped: int
    images: int
    uses_labels: bool
    embeddings: str
    path: Path
    unreadable: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        value = self.metrics.get(metric)
        return float(value) if value is not None else None

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "task": self.task, "metrics": self.metrics, "num_queries": self.num_queries,
                "num_skipped": self.num_skipped, "images": self.images, "uses_labels": self.uses_labels,
                "unreadable": self.unreadable, "embeddings": self.embeddings, "path": str(self.path)}


def parse_result(path: Path, data: dict[str, Any]) -> StoredResult:
    """A results document as written by ``grappa eval`` (raises on a malformed one)."""
    try:
        return StoredResult(
            model=str(data["model"]), task=str(data["task"]),
            metrics={str(k): float(v) for k, v in data["metrics"].items()},
            num_queries=int(data["num_queries"]), num_skipped=int(data["num_skipped"]),
            images=int(data["images"]), uses_labels=bool(data.get("uses_labels", False)),
            embeddings=str(data.get("embeddings", "")), path=path, unreadable=int(data.get("unreadable", 0)),
            provenance=dict(data.get("provenance") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(f"{path} is not a grappa results file ({type(exc).__name__}: {exc})",
                         hint="delete it and rerun `grappa eval`") from None


def read_result(path: Path) -> StoredResult:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"cannot read {path}: {exc}", hint="delete it and rerun `grappa eval`") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} is not a grappa results file", hint="delete it and rerun `grappa eval`")
    return parse_result(path, data)


def load_results(results_dir: Path) -> list[StoredResult]:
    """Every complete results file under ``results_dir`` (``<model>/<task>.json``)."""
    found = []
    for path in sorted(results_dir.glob("*/*.json")):
        result = read_result(path)
        if result.provenance.get("complete", True):
            found.append(result)
    return found


# -- models: kinds, names, order ---------------------------------------------------------


def adaptor_k(model: str) -> int | None:
    """``adaptor:k1024`` -> 1024, ``adaptor:k16-coral`` -> 16 (None for other models)."""
    from grappa_cli.records import increments

    kind, _, rest = model.partition(":")
    if kind == "adaptor" and increments.is_set_name(rest):
        return increments.parse_set(rest)[0]
    return None


def _set_order(model: str) -> tuple[int, str, int]:
    """Adaptor sets in fusion order: the first increment's by k, then each added increment's."""
    from grappa_cli.records import increments

    return increments.set_sort_key(model.partition(":")[2])


def section_of(model: str, uses_labels: bool) -> str:
    """Which section of Table 2 a model belongs to."""
    if model == "backbone":
        return "backbone"
    if uses_labels:
        return "labels"
    if model in ("fused:single-random", "fused:random"):
        return "baselines"
    if model.startswith("adaptor:"):
        return "single"
    return "fused"


def order_models(models: Iterable[str], uses_labels: dict[str, bool] | None = None) -> list[str]:
    """Models in the order of Table 2: M; M + A1, M*(random); M + P_i by k; Grappa-avg, -T, -N,
    other fused models; models that use labels last."""
    labels = uses_labels or {}
    sections = [name for name, _ in SECTIONS]

    def key(model: str) -> tuple[int, tuple[int, str, int], int, str]:
        section = sections.index(section_of(model, labels.get(model, False)))
        order = _set_order(model) if adaptor_k(model) is not None else (-1, "", -1)
        fixed = ("fused:single-random", "fused:random", *_FUSED_ORDER)
        within = fixed.index(model) if model in fixed else len(fixed)
        return (section, order, within, model)

    return sorted(set(models), key=key)


def display_name(model: str, *, set_index: int | None = None, uses_labels: bool = False) -> str:
    """Table 2's name for a model (``Grappa-N``, ``M + P3 (k4096)``); the grappa name otherwise."""
    if model == "backbone":
        name = "M (backbone)"
    elif model in FUSED_NAMES:
        name = FUSED_NAMES[model]
    elif adaptor_k(model) is not None:
        prefix = f"M + P{set_index}" if set_index is not None else "M + P"
        name = f"{prefix} ({model.partition(':')[2]})"
    else:
        name = model
    return f"{name} [uses labels]" if uses_labels else name


def set_indices(models: Iterable[str]) -> dict[str, int]:
    """``{adaptor model: i}`` numbering the single sets P_1..P_N by increasing k."""
    adaptors = sorted((m for m in set(models) if adaptor_k(m) is not None), key=_set_order)
    return {m: i + 1 for i, m in enumerate(adaptors)}


# -- the oracle ---------------------------------------------------------------------------


@dataclass
class OracleChoice:
    """The best single adaptor set of one task, chosen on its test metric."""

    task: str
    model: str
    metrics: dict[str, float]
    metric: str
    #: other sets equal to the choice on ``metric`` at the table's precision (0.1 point)
    ties: list[str]
    candidates: int

    def to_dict(self) -> dict[str, object]:
        return {"task": self.task, "model": self.model, "metrics": self.metrics, "metric": self.metric,
                "ties": self.ties, "candidates": self.candidates}


def oracle(results: Iterable[StoredResult], *, metric: str = ORACLE_METRIC,
           tiebreak: str = ORACLE_TIEBREAK) -> dict[str, OracleChoice]:
    """Per task, the adaptor set ``adaptor:k<K>`` with the highest ``metric`` on the test split.

    Exact ties on ``metric`` are broken by ``tiebreak``, then by the smaller k. Tasks with no
    adaptor-set result have no entry. One set is chosen per task and both of its metrics are
    reported (the paper's oracle is a one-hot attention over the sets, section 4.2).
    """
    per_task: dict[str, list[StoredResult]] = {}
    for result in results:
        if adaptor_k(result.model) is not None and result.value(metric) is not None:
            per_task.setdefault(result.task, []).append(result)
    choices: dict[str, OracleChoice] = {}
    for task, candidates in per_task.items():
        def rank(r: StoredResult) -> tuple[float, float, int]:
            return (-(r.value(metric) or 0.0), -(r.value(tiebreak) or 0.0), adaptor_k(r.model) or 0)

        ordered = sorted(candidates, key=rank)
        best = ordered[0]
        shown = round(100 * (best.value(metric) or 0.0), 1)
        ties = [r.model for r in ordered[1:] if round(100 * (r.value(metric) or 0.0), 1) == shown]
        ties.sort(key=lambda m: adaptor_k(m) or 0)
        choices[task] = OracleChoice(task, best.model, dict(best.metrics), metric, ties, len(candidates))
    return choices


def order_tasks(tasks: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Tasks in the configuration's order, then any others alphabetically."""
    tasks = set(tasks)
    first = [t for t in preferred if t in tasks]
    return first + sorted(tasks - set(first))
