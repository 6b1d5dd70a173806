"""``grappa csv-check FILE``: validate a CSV listing before using it as a task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def csv_check(listing: Annotated[Path, typer.Argument(help="CSV file with path,label,split columns.")]) -> None:
    """Check that a CSV listing is well formed and its images exist."""
    from grappa_cli.console import out
    from grappa_cli.errors import DataError
    from grappa_plugin_template.csv_task import read_listing

    splits = read_listing(listing)
    missing = [p for rows in splits.values() for p, _ in rows if not Path(p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} listed images do not exist, e.g. {missing[0]}")
    for split, rows in splits.items():
        out.print(f"{split}: {len(rows)} images, {len({label for _, label in rows})} classes", highlight=False)
