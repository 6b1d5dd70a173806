"""``grappa init``: create a project directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def init(
    directory: Annotated[Path, typer.Argument(help="Project directory (created if missing).")] = Path("."),
    backbone: Annotated[str | None, typer.Option(help="timm model name of the frozen backbone.")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Local pretrained weights file for the backbone.", show_default=False)
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", "-t", help="A task as NAME=ROOT (repeatable), e.g. cub=/data/CUB_200_2011."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rewrite grappa.toml of an existing project.")] = False,
) -> None:
    """Create a project: grappa.toml, store.zarr/, checkpoints/, results/, reports/, .grappa/."""
    from grappa_cli.console import hint, out
    from grappa_cli.stages.init import create_project

    project = create_project(directory, backbone=backbone, weights=weights, tasks=task or [], force=force)
    out.print(f"Created grappa project in {project.root}", highlight=False)
    hint(f"Next: edit {project.config_path} (tasks and their dataset roots), then run `grappa extract`.")
