"""``grappa adapt``: train one adaptor set per pseudo-label set."""

from __future__ import annotations

from typing import Annotated

import typer

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


def parse_set_names(value: str | None) -> list[str] | None:
    """``"256,4096"``, ``"k256,k4096"``, ``"adaptor:k256"`` or ``"k16-coral"`` -> set names (one spelling)."""
    from grappa_cli.errors import UsageError
    from grappa_cli.records import increments

    names = split_csv(value)
    if not names:
        return None
    sets = []
    for name in names:
        name = name.removeprefix("adaptor:")
        name = f"k{name}" if name[:1].isdigit() else name[:1].lower() + name[1:]
        if not increments.is_set_name(name):
            raise UsageError(f"--k expects stored adaptor sets like k256,k4096 (or 256, adaptor:k256, k16-coral; "
                             f"got {name!r})")
        sets.append(name)
    if len(set(sets)) != len(sets):
        raise UsageError(f"--k lists a value twice ({value})")
    return sorted(sets, key=increments.set_sort_key)


def adapt(
    ctx: typer.Context,
    k: Annotated[str | None, typer.Option("--k", "-k", help="Comma list of adaptor sets to train, e.g. k256,k1024 "
                                          "(default: every stored clustering).",
                                          show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per set (default: grappa.toml).",
                                               show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch.", show_default=False)] = None,
    device: DeviceOption = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed.", show_default=False)] = None,
    workers: WorkersOption = None,
    force: ForceOption = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train an adaptor set per pseudo-label set with the norm-softmax loss (resumable)."""
    from rich.table import Table

    from grappa_cli.console import RichReporter, hint, out
    from grappa_cli.pipeline.stages.adapt import AdaptOptions
    from grappa_cli.pipeline.stages.adapt import adapt as run

    proj = resolve_project(ctx, project)
    options = AdaptOptions(sets=parse_set_names(k), epochs=epochs, batch_size=batch_size, device=device, seed=seed,
                           num_workers=workers, force=force)
    if launch_rank() != 0:
        run(proj, options, None)
        return
    with proj.lock("adapt"):
        results = run(proj, options, RichReporter())
    proj.record_run("adapt", sets=[r.name for r in results])
    if as_json:
        print_json([r.__dict__ for r in results])
        return
    table = Table(title="adaptor sets")
    for column in ("set", "epochs", "loss (first -> last)", "seconds", "images/s", "file"):
        table.add_column(column)
    for r in results:
        losses = f"{r.epoch_losses[0]:.3f} -> {r.epoch_losses[-1]:.3f}" if r.epoch_losses else "-"
        table.add_row(r.name, str(len(r.epoch_losses)), losses, "-" if r.skipped else f"{r.seconds:.1f}",
                      "-" if r.skipped else f"{r.images_per_second:,.1f}",
                      r.path + (" (already complete)" if r.skipped else ""))
    out.print(table)
    hint("Next: `grappa fuse` (Grappa-avg, the default model; or --strategy neighbor, route, transform).")
