"""``grappa status``: what each stage has produced and what to run next."""

from __future__ import annotations

import typer

from grappa_cli.cli.common import JsonOption, ProjectOption, print_json, resolve_project

_STYLE = {"complete": "green", "partial": "yellow", "running": "cyan", "stale": "magenta", "missing": "red"}


def status(ctx: typer.Context, project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Show features, k sets, adaptor sets, fused models and results; what is stale; what to run next."""
    from rich.table import Table

    from grappa_cli.console import out
    from grappa_cli.pipeline.status import collect

    proj = resolve_project(ctx, project)
    report = collect(proj)
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=f"grappa project {report.root}")
    for column in ("stage", "artifact", "state", "details"):
        table.add_column(column)
    for item in report.artifacts:
        detail = item.detail
        if item.stale_inputs:
            detail = (detail + "; " if detail else "") + "changed inputs: " + ", ".join(item.stale_inputs)
        table.add_row(item.stage, item.id, f"[{_STYLE[item.state]}]{item.state}[/]", detail)
    out.print(table)
    if report.update:
        out.print("Incremental update (data.train grew):", highlight=False)
        for line in report.update:
            out.print(f"  - {line}", highlight=False)
    if report.chosen:
        out.print("Chosen for this project and machine:", highlight=False)
        for line in report.chosen:
            out.print(f"  - {line}", highlight=False, markup=False)
    if report.remaining:
        out.print(f"Remaining work: {report.remaining}.", highlight=False)
    for step in report.next_steps:
        out.print(f"Next: {step}", highlight=False)
    if not report.next_steps:
        out.print("Everything is up to date.")
