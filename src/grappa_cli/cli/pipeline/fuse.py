"""``grappa fuse``: fuse the adaptor sets into one model with a fusion strategy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from grappa_cli.cli.common import (
    DeviceOption,
    Flag,
    ForceOption,
    JsonOption,
    ProjectOption,
    WorkersOption,
    launch_rank,
    print_json,
    resolve_project,
)

if TYPE_CHECKING:
    from rich.table import Table

    from grappa_cli.reporting.routing_report import RoutingSources


def routing_table(routing: RoutingSources) -> Table:
    """Grappa-R's choice per training source: the criterion's score and the weight of each candidate."""
    from rich.table import Table

    table = Table(title="routing per training source (weight, criterion score)")
    table.add_column("source")
    table.add_column("images", justify="right")
    for name in routing["candidates"]:
        table.add_column(name, justify="right")
    for s, source in enumerate(routing["sources"]):
        cells = [f"{w:.2f} ({v:.3f})" for w, v in zip(routing["table"][s], routing["scores"][s], strict=True)]
        images = routing["images"][s] if s < len(routing.get("images", [])) else ""
        table.add_row(source, str(images), *cells)
    return table


def attention_training_table(rows: list[dict], sets: list[str]) -> Table:
    """How the attention moved during training: layer means per epoch (epoch 0 = the start)."""
    from rich.table import Table

    table = Table(title="during training (layer means; entropy 1 = uniform = Grappa-avg)")
    for column in ("epoch", "entropy", "logit scale", "|Q|", "|K|"):
        table.add_column(column, justify="right")
    for name in sets:
        table.add_column(f"alpha {name}", justify="right")
    for row in rows:
        scale = "-" if row["logit_scale"] is None else f"{row['logit_scale']:.3f}"
        table.add_row(str(row["epoch"]), f"{row['entropy']:.3f}", scale, f"{row['q_norm']:.2f}",
                      f"{row['k_norm']:.2f}", *(f"{a:.3f}" for a in row["mean_alpha"]))
    return table


def fuse(
    ctx: typer.Context,
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Fusion strategy: avg (the default "
                                          "model), neighbor, route, transform, supervised, random, single-random "
                                          "(see `grappa plugins --all`).")] = "avg",
    sets: Annotated[str | None, typer.Option("--k", "-k", "--sets", help="Comma list of adaptor sets to fuse, "
                                             "e.g. k256,k1024 (default: all).", show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs.", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Pairs per batch.", show_default=False)] = None,
    neighbors: Annotated[int | None, typer.Option(min=1, help="k of the k-NN graph (neighbor).",
                                                  show_default=False)] = None,
    device: DeviceOption = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed.", show_default=False)] = None,
    workers: WorkersOption = None,
    inspect: Annotated[bool, Flag("--inspect", help="Show the learned attention of an existing fused "
                                          "model instead of training.")] = False,
    force: ForceOption = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the fusion of the adaptor sets (Grappa-N, Grappa-R, Grappa-avg, Grappa-T, baselines)."""
    from rich.table import Table

    from grappa_cli.console import RichReporter, hint, out
    from grappa_cli.fusion.base import FusionOptions
    from grappa_cli.pipeline.stages.fuse import fuse as run
    from grappa_cli.pipeline.stages.fuse import inspect_attention

    proj = resolve_project(ctx, project)
    if inspect:
        report = inspect_attention(proj, strategy, device=device)
        if as_json:
            print_json(report)
            return
        table = Table(title=f"mean attention of fused:{strategy} (rows: where images come from)")
        table.add_column("images")
        for name in report["sets"]:
            table.add_column(name, justify="right")
        for label, group in report["groups"].items():
            table.add_row(f"{label} ({group['images']})", *(f"{v:.3f}" for v in group["mean"]))
        out.print(table)
        first = next(iter(report["groups"].values()), None)
        if first:
            layers = Table(title="training set, per layer")
            layers.add_column("layer")
            for name in report["sets"]:
                layers.add_column(name, justify="right")
            for index, row in enumerate(first["per_layer"]):
                layers.add_row(str(index + 1), *(f"{v:.3f}" for v in row))
            out.print(layers)
        if report["training"]:
            out.print(attention_training_table(report["training"], report["sets"]))
        if report.get("routing"):
            out.print(routing_table(report["routing"]))
        return
    options = FusionOptions(epochs=epochs, batch_size=batch_size, device=device, seed=seed, num_workers=workers,
                            neighbors=neighbors, force=force)
    if launch_rank() != 0:
        run(proj, strategy, _set_names(sets), options, None)
        return
    with proj.lock("fuse"):
        result = run(proj, strategy, _set_names(sets), options, RichReporter())
    proj.record_run("fuse", strategy=result.strategy, sets=result.sets)
    if as_json:
        print_json(result.__dict__)
        return
    losses = (f"{result.epoch_losses[0]:.4f} -> {result.epoch_losses[-1]:.4f}" if result.epoch_losses else "-")
    status = "already complete" if result.skipped else f"{result.seconds:.1f} s"
    out.print(f"fused:{result.strategy} over {', '.join(result.sets)}: loss {losses} ({status}) -> {result.path}",
              highlight=False)
    if result.uses_labels:
        out.print("Note: this strategy uses class labels (a supervised reference, not an unsupervised method).")
    hint(f"Next: `grappa eval --model fused:{result.strategy}`; `grappa fuse --strategy {result.strategy} "
         "--inspect` shows its attention.")


def _set_names(value: str | None) -> list[str] | None:
    """``k256,k1024`` (also ``256`` or ``adaptor:k256``) -> ``["k256", "k1024"]``; None for all."""
    from grappa_cli.cli.pipeline.adapt import parse_set_names

    return parse_set_names(value)
