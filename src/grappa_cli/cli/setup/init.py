"""``grappa init``: create a project directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grappa_cli.cli.common import Flag


def init(
    directory: Annotated[Path, typer.Argument(help="Project directory (created if missing).")] = Path("."),
    backbone: Annotated[str | None, typer.Option(help="timm model name of the frozen backbone.")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Local pretrained weights file for the backbone.", show_default=False)
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task", "-t",
            help="A task as NAME=ROOT (repeatable), e.g. cub=/data/CUB_200_2011; a NAME that is no task "
                 "reader reads ROOT as an image folder. The given tasks form the training set.",
        ),
    ] = None,
    force: Annotated[bool, Flag("--force", help="Rewrite grappa.toml of an existing project.")] = False,
) -> None:
    """Create a project: grappa.toml, store.zarr/, checkpoints/, results/, reports/, .grappa/."""
    from rich.markup import escape

    from grappa_cli.cli.setup.task import print_summary
    from grappa_cli.console import hint, out
    from grappa_cli.setup.init import initialise

    project, summaries = initialise(directory, backbone=backbone, weights=weights, tasks=task or [], force=force)
    out.print(escape(f"Created grappa project in {project.root}"), highlight=False)
    for summary in summaries:
        print_summary(summary, verb="Read")
    if summaries:
        hint(f"Next: `grappa -C {project.root} run` (or the stages one by one, from `grappa extract`).")
    else:
        hint(f"Next: add your images with `grappa -C {project.root} task add NAME ROOT --train`, "
             "then run `grappa extract`.")
