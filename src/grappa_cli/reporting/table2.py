"""Table 2 as data: its rows, and the text of each cell (shared by the Markdown, the CSV, the
terminal table and the HTML page)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from grappa_cli.reporting.results import TABLE_METRICS, OracleChoice

METRIC_KEYS = tuple(key for key, _ in TABLE_METRICS)
#: Appended to the value of a result whose inputs changed since it was computed.
STALE_MARK = "†"


@dataclass
class TableRow:
    """One line of the table.

    ``kind`` is ``section`` (a heading), ``model`` (a model's results), ``oracle`` (the oracle's
    values), ``oracle_sets`` (the set it chose, in ``text``), ``delta`` (a model minus the
    backbone, in percentage points) or ``paper`` / ``paper_oracle_sets`` / ``paper_delta``
    (the paper's printed numbers). ``values[task][metric]`` are percentages.
    """

    kind: str
    label: str
    model: str | None = None
    section: str = ""
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    uses_labels: bool = False
    stale_tasks: list[str] = field(default_factory=list)


@dataclass
class Table2:
    tasks: list[str]
    titles: dict[str, str]
    rows: list[TableRow]
    oracle: dict[str, OracleChoice]
    notes: list[str]

    def to_dict(self) -> dict[str, object]:
        return {"tasks": self.tasks, "titles": self.titles, "metrics": dict(TABLE_METRICS),
                "rows": [asdict(r) for r in self.rows],
                "oracle": {t: c.to_dict() for t, c in self.oracle.items()}, "notes": self.notes}



def cell(row: TableRow, task: str, metric: str) -> str:
    """The text of one cell: ``17.5``, ``(↑0.6)``, a set name, or ``-`` when there is no value."""
    if row.kind in ("oracle_sets", "paper_oracle_sets"):
        return row.text.get(task, "") if metric == METRIC_KEYS[0] else ""
    value = row.values.get(task, {}).get(metric)
    if value is None:
        return "" if row.kind == "section" else "-"
    if row.kind in ("delta", "paper_delta"):
        shown = round(value, 1)
        arrow = "↑" if shown > 0 else "↓" if shown < 0 else "="
        return f"({arrow}{abs(shown):.1f})"
    mark = STALE_MARK if task in row.stale_tasks else ""
    return f"{value:.1f}{mark}"
