"""``grappa report``: Table 2, Fig. 4 and Fig. 5 of the paper from the stored results.

Everything comes from ``results/<model>/<task>.json`` (and, for Fig. 5, the embeddings those
results were computed from); nothing is re-evaluated. The table has the paper's rows in the
paper's order (section 4.2): the backbone M; the baselines without pseudo-granularity
adaptors (M + A1, M*(random)); the single sets M + P_i by increasing k; the oracle O with the
set it chose per task; the fused models (Grappa-avg, Grappa-T, Grappa-N, others), each
followed by its difference to M; models trained with labels last, marked. Values are
percentages with one decimal, as printed in the paper.

The report takes no project lock: it writes only under ``reports/`` (atomically) and reads
results files, which ``grappa eval`` replaces atomically, so it can run while eval works.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grappa_cli.console import NullReporter, Reporter

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
from grappa_cli.errors import StoreError
from grappa_cli.project import Project
from grappa_cli.records import artifacts
from grappa_cli.reporting import paper
from grappa_cli.reporting.results import (
    ORACLE_METRIC,
    SECTIONS,
    TABLE_METRICS,
    OracleChoice,
    StoredResult,
    display_name,
    load_results,
    oracle,
    order_models,
    order_tasks,
    section_of,
    set_indices,
)
from grappa_cli.reporting.table2 import METRIC_KEYS, STALE_MARK, Table2, TableRow, cell

__all__ = ["METRIC_KEYS", "STALE_MARK", "Table2", "TableRow", "build_table", "cell", "report"]

#: Written after every other report file: which results the report shows (``report_state``).
MANIFEST = "report.json"


def _percent(result: StoredResult) -> dict[str, float]:
    return {m: 100.0 * v for m in METRIC_KEYS if (v := result.value(m)) is not None}


def _set_text(choice: OracleChoice, indices: dict[str, int]) -> str:
    """``P3 (k4096)``, and ``= P4`` for each set that ties with it at the table's precision."""
    def short(model: str) -> str:
        return f"P{indices[model]}" if model in indices else model

    text = f"{short(choice.model)} ({choice.model.partition(':')[2]})"
    return text + "".join(f" = {short(m)}" for m in choice.ties)


def build_table(
    results: Sequence[StoredResult], *, task_order: Sequence[str] = (), task_types: dict[str, str] | None = None,
    stale: set[tuple[str, str]] | None = None, deltas: bool = True, paper_rows: bool = False,
    oracle_metric: str = ORACLE_METRIC,
) -> Table2:
    """Table 2 of the given results (see the module docstring for the rows).

    ``task_types`` maps task names to their reader type, which is how the paper's columns
    are matched to the project's tasks with ``paper_rows``; ``stale`` lists (model, task)
    results whose inputs changed since (their cells are marked).
    """
    types = task_types or {}
    stale = stale or set()
    by_model: dict[str, dict[str, StoredResult]] = {}
    labels: dict[str, bool] = {}
    for r in results:
        by_model.setdefault(r.model, {})[r.task] = r
        labels[r.model] = labels.get(r.model, False) or r.uses_labels
    tasks = order_tasks({r.task for r in results}, task_order)
    titles = {t: t for t in tasks}
    paper_columns: dict[str, str] = {}  # paper task type -> column
    if paper_rows:
        for t in tasks:
            if types.get(t, t) in paper.TASKS and types.get(t, t) not in paper_columns:
                paper_columns[types.get(t, t)] = t
        for task_type in paper.TASKS:
            if task_type not in paper_columns:
                column = task_type if task_type not in titles else f"paper-{task_type}"
                tasks.append(column)
                titles[column] = f"{paper.TASK_TITLES[task_type]} (paper only)"
                paper_columns[task_type] = column

    models = order_models(by_model, labels)
    indices = set_indices(models)
    choices = oracle(results, metric=oracle_metric)
    backbone = by_model.get("backbone", {})
    rows: list[TableRow] = []
    notes: list[str] = []
    for section, heading in SECTIONS:
        members = [m for m in models if section_of(m, labels.get(m, False)) == section]
        if not members:
            continue
        if section != "backbone":
            rows.append(TableRow("section", heading, section=section))
        for model in members:
            per_task = by_model[model]
            rows.append(TableRow(
                "model", display_name(model, set_index=indices.get(model), uses_labels=labels.get(model, False)),
                model=model, section=section, values={t: _percent(r) for t, r in per_task.items()},
                uses_labels=labels.get(model, False), stale_tasks=sorted(t for t in per_task if (model, t) in stale)))
            if deltas and section in ("fused", "labels") and backbone:
                diff = {t: {m: v - b[m] for m, v in _percent(r).items() if m in (b := _percent(backbone[t]))}
                        for t, r in per_task.items() if t in backbone}
                rows.append(TableRow("delta", f"  vs. M ({display_name(model)})", model=model, section=section,
                                     values=diff))
        if section == "single" and choices:
            rows.append(TableRow("oracle", "Oracle (O) [selected on test labels]", section=section,
                                 values={t: {m: 100.0 * c.metrics[m] for m in METRIC_KEYS if m in c.metrics}
                                         for t, c in choices.items()}))
            rows.append(TableRow("oracle_sets", "  i.e. only", section=section,
                                 text={t: _set_text(c, indices) for t, c in choices.items()}))
    if choices:
        metric_title = dict(TABLE_METRICS).get(oracle_metric, oracle_metric)
        notes.append(f"Oracle O: per task, the single adaptor set with the best test {metric_title} (ties: the "
                     "other metric, then the smaller k). It uses the test labels to choose, so it is a reference, "
                     "not a method (section 4.2).")
    if any(labels.values()):
        notes.append("[uses labels]: trained with class labels; a supervised reference, not comparable.")
    if stale:
        notes.append(f"{STALE_MARK}: stale result (the model or its embeddings changed since); rerun `grappa eval`.")
    if deltas and any(r.kind == "delta" for r in rows):
        notes.append("vs. M: difference to the backbone in percentage points, from the unrounded values.")
    if paper_rows:
        rows += _paper_rows(paper_columns)
        notes.append("Paper rows: the numbers printed in Table 2 of the paper (ViT-S/16 DINO, N = 8 sets, the "
                     "MRT datasets), for reference; they were not computed by this project. Paper columns are "
                     "matched to tasks by reader type.")
    return Table2(tasks, titles, rows, choices, notes)


def _paper_rows(columns: dict[str, str]) -> list[TableRow]:
    rows = [TableRow("section", "Reported in the paper (Table 2, ECCV 2022), not computed here", section="paper")]
    for item in paper.TABLE2:
        values = {columns[t]: dict(zip(METRIC_KEYS, v, strict=True))
                  for t in paper.TASKS if t in columns and (v := item.get(t))}
        rows.append(TableRow("paper", f"paper: {item.label}", model=item.model, section="paper", values=values))
        if item.label == "Oracle (O)":
            rows.append(TableRow("paper_oracle_sets", "paper:   i.e. only", section="paper",
                                 text={columns[t]: paper.ORACLE_SETS[t] for t in paper.TASKS if t in columns}))
    deltas = {columns[t]: dict(zip(METRIC_KEYS, paper.GRAPPA_N_VS_DINO[i], strict=True))
              for i, t in enumerate(paper.TASKS) if t in columns}
    rows.append(TableRow("paper_delta", "paper:   vs. DINO (Grappa-N)", section="paper", values=deltas))
    return rows


# -- formatting ------------------------------------------------------------------------------


def to_markdown(table: Table2, title: str = "Table 2: leave-one-out retrieval on each task's test split") -> str:
    head = ["Model"] + [f"{table.titles[t]} {name}" for t in table.tasks for _, name in TABLE_METRICS]
    lines = [f"# {title}", "", "RP = R-Precision, mAP = MAP@R (Musgrave et al., 2020), in percent.", "",
             "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for row in table.rows:
        label = row.label.replace("|", "\\|").replace("*", "\\*")
        if row.kind == "section":
            lines.append(f"| *{label}* |" + " |" * (len(head) - 1))
            continue
        cells = [cell(row, t, m) for t in table.tasks for m in METRIC_KEYS]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    if table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table2) -> str:
    """One line per row; values in percent (4 decimals), oracle sets as text.

    ``default`` is true on exactly one row: the model row of the project's default model
    (:func:`~grappa_cli.reporting.results.default_of`: Grappa-avg when present).
    """
    from grappa_cli.reporting.results import default_of

    default = default_of(row.model for row in table.rows if row.kind == "model" and row.model)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["kind", "section", "label", "model", "uses_labels", "default",
                     *[f"{t}:{m}" for t in table.tasks for m in METRIC_KEYS]])
    for row in table.rows:
        if row.kind == "section":
            continue
        cells: list[str] = []
        for t in table.tasks:
            for m in METRIC_KEYS:
                if row.kind in ("oracle_sets", "paper_oracle_sets"):
                    cells.append(row.text.get(t, "") if m == METRIC_KEYS[0] else "")
                else:
                    value = row.values.get(t, {}).get(m)
                    cells.append("" if value is None else f"{value:.4f}")
        is_default = row.kind == "model" and row.model == default
        writer.writerow([row.kind, row.section, row.label.strip(), row.model or "", str(row.uses_labels).lower(),
                         str(is_default).lower(), *cells])
    return buffer.getvalue()


# -- the command's stage -----------------------------------------------------------------------


@dataclass
class ReportOptions:
    paper: bool = False
    examples: bool = False
    examples_per_task: int = 2
    examples_model: str | None = None
    oracle_metric: str = ORACLE_METRIC
    device: str | None = None
    #: also write reports/index.html (galleries, granularities, curves; see grappa_cli.reporting)
    html: bool = True


@dataclass
class ReportResult:
    table: Table2
    files: list[str]
    examples: Mapping[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"table": self.table.to_dict(), "files": self.files, "examples": self.examples}


def task_types(config: GrappaConfig, tasks: Iterable[str]) -> dict[str, str]:
    """Reader type of each task (its name when it is no longer configured)."""
    return {t: (config.tasks[t].type if t in config.tasks else t) for t in tasks}


def stale_results(project: Project, results: Sequence[StoredResult]) -> set[tuple[str, str]]:
    """(model, task) of the results whose recorded inputs changed since."""
    store = project.store(mode="r") if project.store_path.exists() else None
    return {(r.model, r.task) for r in results if artifacts.stale_inputs(project, r.provenance, store)}


def report(project: Project, options: ReportOptions, reporter: Reporter | None = None) -> ReportResult:
    """Write ``reports/table2.md``, ``table2.csv``, ``fig4_per_task.png`` (and ``fig5_examples.png``).

    With a Grappa-R result, also ``routing.md`` / ``routing.csv``: where it routes each task; and
    ``index.html`` with its ``assets/`` (:mod:`grappa_cli.reporting`) unless ``options.html`` is off.
    """
    from grappa_cli.reporting import figures, routing_report
    from grappa_cli.storage.fsutil import atomic_write_text

    reporter = reporter or NullReporter()
    if options.oracle_metric not in METRIC_KEYS:
        from grappa_cli.errors import UsageError

        raise UsageError(f"--oracle-metric must be one of {', '.join(METRIC_KEYS)} (got {options.oracle_metric!r})")
    config = project.config()
    results = load_results(project.results_dir)
    table = report_table(project, options, config, results)
    out_dir = project.reports_dir
    files = []
    for name, text in (("table2.md", to_markdown(table)), ("table2.csv", to_csv(table))):
        atomic_write_text(out_dir / name, text)
        files.append(str(out_dir / name))
    if results:
        with reporter.task("plotting Fig. 4", total=None):
            path = out_dir / "fig4_per_task.png"
            figures.per_task_figure(results, table.oracle, path, task_order=list(config.tasks))
            files.append(str(path))
    if any(r.model == routing_report.MODEL for r in results):
        with reporter.task("routing of Grappa-R per task", total=None):
            routed = routing_report.routing_report(project, table.tasks, table.oracle, device=options.device)
        if routed is not None:
            for name, text in (("routing.md", routing_report.to_markdown(routed)),
                               ("routing.csv", routing_report.to_csv(routed))):
                atomic_write_text(out_dir / name, text)
                files.append(str(out_dir / name))
    examples: Mapping[str, object] = {}
    if options.examples:
        with reporter.task("plotting Fig. 5", total=None):
            path = out_dir / "fig5_examples.png"
            examples = figures.examples_figure(project, results, path, model=options.examples_model,
                                               per_task=options.examples_per_task, task_order=list(config.tasks),
                                               device=options.device)
            files.append(str(path))
    if options.html:
        from grappa_cli.reporting.page import write_page

        with reporter.task("writing the HTML report", total=None):
            page = write_page(project, config, table, results, files, device=options.device, reporter=reporter)
        files.append(str(page.path))
    # The manifest last: it says which results the files above show, and that they are all written.
    manifest = {"results": current_results(project), "files": [Path(f).name for f in files]}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return ReportResult(table, files, examples)


def report_table(project: Project, options: ReportOptions, config: GrappaConfig | None = None,
                 results: Sequence[StoredResult] | None = None) -> Table2:
    """Table 2 of the stored results, with its notes (what ``table2.md`` shows), writing nothing."""
    config = config or project.config()
    results = load_results(project.results_dir) if results is None else results
    if not results and not options.paper:
        raise StoreError("no results yet", hint="run `grappa eval` (or pass --paper to see the paper's numbers)")
    tasks = {r.task for r in results}
    table = build_table(results, task_order=list(config.tasks), task_types=task_types(config, tasks),
                        stale=stale_results(project, results), paper_rows=options.paper,
                        oracle_metric=options.oracle_metric)
    table.notes += duplicate_notes(project, config, table.tasks)
    return table


def current_report(project: Project, options: ReportOptions, reporter: Reporter | None = None) -> ReportResult:
    """The report as written when its manifest shows the current results (its table and files), else a new one.

    What ``grappa demo`` prints after ``grappa run`` wrote the report: the same table and files,
    without plotting and rendering them a second time.
    """
    if report_state(project) != "complete":
        return report(project, options, reporter)
    manifest = json.loads((project.reports_dir / MANIFEST).read_text())
    files = [str(project.reports_dir / name) for name in manifest.get("files", [])]
    return ReportResult(report_table(project, options), files, {})


def duplicate_notes(project: Project, config: GrappaConfig, tasks: Sequence[str]) -> list[str]:
    """One note per task whose test split shares images with the training set (the stored check)."""
    if not project.store_path.exists():
        return []
    from grappa_cli.pipeline.stages import duplicates

    store = project.store(mode="r")
    kept = {"warn": "its results include them", "drop": "its results leave them out",
            "error": "it is not evaluated until they are removed"}[config.data.on_duplicates]
    notes = []
    for task in tasks:
        found = duplicates.stored(store, config, task)
        if found is not None and found.count:
            notes.append(f"{found.line()}: {kept} ([data] on_duplicates = \"{config.data.on_duplicates}\").")
    return notes


def current_results(project: Project) -> dict[str, str | None]:
    """``results/<model>/<task>`` -> fingerprint of every stored result."""
    ids = [f"results/{p.parent.name}/{p.stem}" for p in sorted(project.results_dir.glob("*/*.json"))]
    return {i: artifacts.fingerprint(project, i) for i in ids}


def report_state(project: Project) -> str:
    """``complete`` when the report's manifest lists every file present and the current results, else why not."""
    path = project.reports_dir / MANIFEST
    if not path.is_file():
        return "missing"
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return "missing"
    if any(not (project.reports_dir / name).is_file() for name in manifest.get("files", [])):
        return "partial"
    return "complete" if manifest.get("results") == current_results(project) else "stale"
