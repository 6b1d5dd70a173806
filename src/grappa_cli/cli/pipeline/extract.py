"""``grappa extract``: backbone features of the training set and the test splits."""

from __future__ import annotations

from typing import Annotated

import typer

from grappa_cli.cli.choices import Split, value
from grappa_cli.cli.common import (
    DeviceOption,
    ForceOption,
    JsonOption,
    ProjectOption,
    WorkersOption,
    launch_rank,
    print_json,
    resolve_project,
    split_csv,
)


def extract(
    ctx: typer.Context,
    split: Annotated[Split, typer.Option(help="Which splits: train, test or all.")] = Split.all,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Comma list of tasks whose test split to extract "
                                            "(default: the evaluation tasks).", show_default=False)] = None,
    device: DeviceOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch.", show_default=False)] = None,
    workers: WorkersOption = None,
    weights: Annotated[str | None, typer.Option(help="Local pretrained weights file for the backbone.",
                                                show_default=False)] = None,
    force: ForceOption = False,
    verify: Annotated[bool, typer.Option("--verify", help="Hash every image's bytes and redo the splits whose "
                                         "images changed, even where size and time stayed the same.")] = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Extract frozen-backbone features (resumable; rerun after an interruption to continue)."""
    from rich.table import Table

    from grappa_cli.console import RichReporter, hint, out, warn
    from grappa_cli.errors import UsageError
    from grappa_cli.pipeline.stages.extract import ExtractOptions
    from grappa_cli.pipeline.stages.extract import extract as run

    split = value(split)
    splits = {"all": ("train", "test"), "train": ("train",), "test": ("test",)}.get(split)
    if splits is None:
        raise UsageError(f"--split must be train, test or all (got {split!r})")
    proj = resolve_project(ctx, project)
    options = ExtractOptions(splits=splits, tasks=split_csv(task) or None, device=device, batch_size=batch_size,
                             num_workers=workers, weights=weights, force=force,
                             verify=verify)
    main_rank = launch_rank() == 0
    if main_rank:
        with proj.lock("extract"):
            results = run(proj, options, RichReporter() if main_rank else None)
    else:
        results = run(proj, options, None)
    if not main_rank:
        return
    proj.record_run("extract", splits=list(splits), results=[r.key for r in results])
    if as_json:
        print_json([{"key": r.key, "images": r.images, "bad": r.bad, "dim": r.dim, "seconds": r.seconds,
                     "skipped": r.skipped} for r in results])
        return
    table = Table(title="extracted features")
    for column in ("split", "images", "bad", "dim", "seconds", "images/s", ""):
        table.add_column(column)
    for r in results:
        table.add_row(r.key, str(r.images), str(len(r.bad)), str(r.dim),
                      "-" if r.skipped else f"{r.seconds:.1f}",
                      "-" if r.skipped else f"{r.images_per_second:,.1f}", "already complete" if r.skipped else "")
    out.print(table)
    for r in results:
        for item in r.bad[:20]:
            warn(f"skipped unreadable image {item['path']}: {item['error']}")
        if len(r.bad) > 20:
            warn(f"... and {len(r.bad) - 20} more unreadable images in {r.key} (see `grappa status --json`)")
    hint("Next: `grappa cluster` (pseudo-labels at several k).")
