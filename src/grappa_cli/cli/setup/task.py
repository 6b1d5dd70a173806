"""``grappa task add`` / ``grappa task list``: the retrieval tasks of a project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grappa_cli.cli.common import Flag, JsonOption, ProjectOption, print_json, resolve_project

task_app = typer.Typer(
    help="Configure the project's retrieval tasks (dataset readers) and show their splits.",
    no_args_is_help=True,
)


def _split(summary_split) -> str:
    if summary_split is None:
        return "-"
    return f"{summary_split.classes:,} classes / {summary_split.images:,} images"


def _warn_singletons(name: str, classes: list[str]) -> None:
    from grappa_cli.console import warn

    if classes:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        warn(
            f"task {name}: {len(classes)} test class(es) have a single image ({shown}); they give no "
            "leave-one-out query but stay in the other queries' rankings."
        )


@task_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            help="Task name: the table tasks.NAME of grappa.toml, and what `grappa eval --task` takes."
        ),
    ],
    root: Annotated[Path, typer.Argument(help="Dataset folder (or the folder holding it).")],
    task_type: Annotated[
        str | None, typer.Option("--type", help="Task reader (default: NAME); see `grappa plugins --all`.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Reader option KEY=VALUE (repeatable), e.g. split=all-test."),
    ] = None,
    force: Annotated[bool, Flag("--force", help="Replace an existing task of that name.")] = False,
    train: Annotated[
        bool,
        Flag("--train", help="Also train on it: add it to data.train (and to eval.tasks if that lists tasks)."),
    ] = False,
    project: ProjectOption = None,
) -> None:
    """Read a dataset to check it, print its split sizes and add it to grappa.toml.

    Without --type, NAME is the reader when one has that name (cub, cars, ...); any other name
    reads an image folder: ROOT/<class>/<image>, or ROOT/train and ROOT/test class trees as the
    two splits.
    """
    from grappa_cli.setup.tasks import add_task, parse_options

    proj = resolve_project(ctx, project)
    summary = add_task(
        proj, name, root, task_type=task_type, options=parse_options(option or []), force=force, train=train
    )
    print_summary(summary, verb="Added")


def print_summary(summary, *, verb: str) -> None:
    """One line per task: reader, root, split sizes; the reader's note; singleton warnings."""
    from rich.markup import escape

    from grappa_cli.console import hint, out

    used = " (in the training set)" if summary.in_training_set else ""
    out.print(
        escape(f"{verb} task {summary.name} (type {summary.type}, root {summary.root}): "
               f"train {_split(summary.train)}; test {_split(summary.test)}{used}."),
        highlight=False,
    )
    if summary.note:
        hint(f"task {summary.name}: {summary.note}.")
    _warn_singletons(summary.name, summary.singleton_test_classes)


@task_app.command("list")
def list_(ctx: typer.Context, project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Configured tasks with their train/test classes and images (exit code 1 if one cannot be read)."""
    from rich.markup import escape
    from rich.table import Table

    from grappa_cli.console import hint, out
    from grappa_cli.setup.tasks import list_tasks

    proj = resolve_project(ctx, project)
    summaries = list_tasks(proj.config())
    if as_json:
        print_json([s.to_dict() for s in summaries])
    elif not summaries:
        out.print("No tasks configured.")
        hint("Add one with `grappa task add NAME ROOT`.")
    else:
        table = Table(title=f"tasks of {proj.root}")
        for column in ("task", "type", "train", "test", "used for", "root"):
            table.add_column(column)
        for s in summaries:
            used = ", ".join(u for u, on in (("D", s.in_training_set), ("eval", s.evaluated)) if on) or "-"
            if s.error:
                table.add_row(
                    escape(s.name),
                    escape(s.type),
                    f"[red]error: {escape(s.error)}[/red]",
                    "",
                    used,
                    escape(s.root),
                )
            else:
                table.add_row(
                    escape(s.name), escape(s.type), _split(s.train), _split(s.test), used, escape(s.root)
                )
        out.print(table)
    for s in summaries:
        _warn_singletons(s.name, s.singleton_test_classes)
    broken = [s.name for s in summaries if s.error]
    if broken:
        from grappa_cli.errors import DataError

        raise DataError(f"{len(broken)} task(s) could not be read: {', '.join(broken)}",
                        hint="see their errors above, fix the roots with `grappa task add NAME ROOT --force`")
