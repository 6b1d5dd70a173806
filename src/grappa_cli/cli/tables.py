"""Rich rendering of the results table shared by ``grappa eval`` and ``grappa report``."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Literal, cast

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

    from grappa_cli.reporting.table2 import Table2, TableRow

_ROW_STYLE = {"section": "italic", "oracle": "dim", "oracle_sets": "dim", "delta": "cyan", "paper": "blue",
              "paper_oracle_sets": "blue", "paper_delta": "blue"}


#: Compact mode's section headings (the full ones are in the table's notes and the Markdown file).
_SHORT_SECTIONS = {"baselines": "Without adaptors", "single": "Single sets P_i", "fused": "Fused (M*)",
                   "labels": "Use class labels", "paper": "Paper"}
#: What compact labels abbreviate, said once under the table.
COMPACT_NOTE = ("Short labels: Oracle (O) is selected on test labels; 'vs. M' rows are the difference to the "
                "backbone; [L] = trained with class labels.")


def compact_label(row: TableRow) -> str:
    """A row label short enough for an 80-column table; what it drops is said in :data:`COMPACT_NOTE`."""
    if row.kind == "section":
        return _SHORT_SECTIONS.get(row.section, row.label)
    if row.kind == "oracle":
        return "Oracle (O)"
    if row.kind == "oracle_sets":
        return "  i.e. only"
    if row.kind == "delta":
        return "  vs. M"
    return row.label.replace(" [uses labels]", " [L]")


def table2_rich(table: Table2, title: str, *, compact: bool = False) -> Table:
    """A rich Table: rows as built by ``grappa_cli.reporting.report.build_table``, columns task x (RP, mAP).

    ``compact``: short row labels and light borders, so three tasks fit 80 columns.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from grappa_cli.reporting.report import METRIC_KEYS, cell
    from grappa_cli.reporting.results import TABLE_METRICS

    rich_table = Table(title=Text(title), box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
                       padding=(0, 1) if not compact else (0, 0, 0, 1))
    rich_table.add_column("model", no_wrap=True)
    for task in table.tasks:
        for _, name in TABLE_METRICS:
            rich_table.add_column(f"{table.titles[task]}\n{name}", justify="right", min_width=5, no_wrap=True)
    for row in table.rows:
        cells = [cell(row, t, m) for t in table.tasks for m in METRIC_KEYS]
        style = _ROW_STYLE.get(row.kind)
        if row.kind == "section":
            cells = ["" for _ in cells]
        label = compact_label(row) if compact else row.label
        rich_table.add_row(Text(label), *(Text(c) for c in cells), style=style)
    return rich_table


def print_table2(console: Console, table: Table2, title: str) -> None:
    """Table 2 and its notes at the console's width: full labels when they fit, else the compact form.

    The width is the terminal's (``COLUMNS`` or 80 in a pipe). A table that is too wide even
    in compact form (many tasks) is printed whole at its natural width rather than cut.
    """
    from rich.measure import Measurement

    def natural(renderable: RenderableType) -> int:
        return Measurement.get(console, console.options.update_width(10_000), renderable).maximum

    full = table2_rich(table, title)
    notes = list(table.notes)
    if natural(full) <= console.width:
        console.print(full)
    else:
        print_wide(console, table2_rich(table, title, compact=True))
        notes.append(COMPACT_NOTE)
    for note in notes:  # wrapped to the width, never one long line
        for line in textwrap.wrap(note, width=max(40, console.width)):
            console.print(line, highlight=False, markup=False)


def print_wide(console: Console, renderable: RenderableType) -> None:
    """Print a table whole: into a pipe or a file at its natural width rather than cut to 80 columns."""
    from rich.console import Console
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10_000), renderable).maximum
    if natural <= console.width:
        console.print(renderable)
        return
    colours = cast("Literal['standard', '256', 'truecolor', 'windows'] | None", console.color_system)  # its names
    Console(file=console.file, width=natural, soft_wrap=True, force_terminal=console.is_terminal,
            color_system=colours).print(renderable)
