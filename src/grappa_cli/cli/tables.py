"""Rich rendering of the results table shared by ``grappa eval`` and ``grappa report``."""

from __future__ import annotations

from typing import Any

_ROW_STYLE = {"section": "italic", "oracle": "dim", "oracle_sets": "dim", "delta": "cyan", "paper": "blue",
              "paper_oracle_sets": "blue", "paper_delta": "blue"}


def table2_rich(table: Any, title: str) -> Any:
    """A rich Table: rows as built by ``grappa_cli.stages.report.build_table``, columns task x (RP, mAP)."""
    from rich.table import Table
    from rich.text import Text

    from grappa_cli.stages.report import METRIC_KEYS, cell
    from grappa_cli.stages.results import TABLE_METRICS

    rich_table = Table(title=Text(title))
    rich_table.add_column("model", no_wrap=True)
    for task in table.tasks:
        for _, name in TABLE_METRICS:
            rich_table.add_column(f"{table.titles[task]}\n{name}", justify="right", min_width=5)
    for row in table.rows:
        cells = [cell(row, t, m) for t in table.tasks for m in METRIC_KEYS]
        style = _ROW_STYLE.get(row.kind)
        if row.kind == "section":
            cells = ["" for _ in cells]
        rich_table.add_row(Text(row.label), *(Text(c) for c in cells), style=style)
    return rich_table


def print_wide(console: Any, renderable: Any) -> None:
    """Print a table whole: into a pipe or a file at its natural width rather than cut to 80 columns."""
    from rich.console import Console
    from rich.measure import Measurement

    if console.is_terminal:
        console.print(renderable)
        return
    natural = Measurement.get(console, console.options.update_width(10_000), renderable).maximum
    Console(file=console.file, width=max(console.width, natural), soft_wrap=True).print(renderable)
