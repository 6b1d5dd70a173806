"""Pieces shared by command modules: the project option, JSON output, parsing helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from grappa_cli.project import Project


def Flag(*param_decls: str, **kwargs: Any) -> Any:  # noqa: N802 (used like typer.Option)
    """``typer.Option`` for an on/off flag: help shows no ``<bool>`` after the flag's name."""
    return typer.Option(*param_decls, metavar="", **kwargs)


ProjectOption = Annotated[
    Path | None,
    typer.Option("--project", "-C", help="Project directory (overrides the global -C).", show_default=False),
]
JsonOption = Annotated[bool, Flag("--json", help="Print one JSON document instead of tables.")]
ForceOption = Annotated[bool, Flag("--force", help="Redo work that is already complete.")]
DeviceOption = Annotated[
    str | None,
    typer.Option(help="auto, cpu, cuda or cuda:N (default: runtime.device in grappa.toml).", show_default=False),
]
WorkersOption = Annotated[
    int | None, typer.Option(min=0, help="Decoding worker processes (default: data.num_workers).", show_default=False)
]


def resolve_project(ctx: typer.Context, project: Path | None) -> Project:
    """The project named on this command, else globally, else discovered."""
    from grappa_cli.project import discover
    from grappa_cli.storage.diskerrors import set_root

    explicit = project if project is not None else (ctx.obj or {}).get("project")
    found = discover(explicit)
    set_root(found.root)
    return found


def print_json(data: object) -> None:
    """One JSON document on stdout (no rich markup, no wrapping)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def split_csv(value: str | None) -> list[str]:
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def launch_rank() -> int:
    """This process's rank under ``torchrun`` (``RANK``), 0 otherwise.

    Read from the environment, before any process group exists: only rank 0 takes the
    project lock, reports progress and prints results.
    """
    import os

    return int(os.environ.get("RANK", "0") or 0)
