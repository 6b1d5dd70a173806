"""``grappa cluster``: k-means of the training features at several k (Step 1, pseudo-labels)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from grappa_cli.cli.common import ForceOption, JsonOption, ProjectOption, print_json, resolve_project

if TYPE_CHECKING:
    from grappa_cli.pipeline.stages.cluster import ClusterReport

K_HELP = (
    "Numbers of clusters: a comma list (256,1024,4096), binary suffixes (4k = 4096, 64k = 65536: "
    "k means 1024, as the paper's k are powers of two) or `auto` (cluster.auto_count powers of two "
    "from about n/512, at least cluster.auto_min_k, to n/2 for n training images). "
    "Default: \\[cluster] k in grappa.toml."
)


def cluster(
    ctx: typer.Context,
    k: Annotated[str | None, typer.Option("--k", "-k", help=K_HELP, show_default=False)] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", "-b", help="Clusterer plugin (faiss, sklearn, minibatch, ...; see "
                     "`grappa plugins --all`). Default: \\[cluster] backend.", show_default=False),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="k-means++ seed. Default: \\[cluster] seed.",
                                 show_default=False),
    ] = None,
    niter: Annotated[
        int | None,
        typer.Option("--niter", min=1, help="Maximum Lloyd iterations. Default: \\[cluster] niter.",
                     show_default=False),
    ] = None,
    force: ForceOption = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Partition the extracted training features into k clusters for each k (one pseudo-label set each).

    Writes store.zarr/clusters/k<K>/ (centroids, labels, sizes). Complete sets are skipped;
    sets made from other features or settings are refused unless --force.
    """
    from grappa_cli.console import RichReporter, hint
    from grappa_cli.pipeline.stages import cluster as stage

    proj = resolve_project(ctx, project)
    with proj.lock("cluster"):
        report = stage.run(proj, k=k, backend=backend, seed=seed, niter=niter, force=force,
                           reporter=RichReporter())
        proj.record_run("cluster", backend=report.backend, k=[o.k for o in report.outcomes],
                        clustered=[o.k for o in report.outcomes if o.status == "clustered"])
    if as_json:
        print_json(report.to_dict())
        return
    _print_table(report)
    hint("Next: `grappa adapt` trains one adaptor set per k.")


def _print_table(report: ClusterReport) -> None:
    from rich.table import Table

    from grappa_cli.console import out

    left_out = f", {report.unreadable:,} unreadable left out" if report.unreadable else ""
    table = Table(title=f"k-means of {report.n:,} training features "
                        f"(D={report.dim}{left_out}, backend {report.backend}, seed {report.seed})")
    for column in ("k", "status", "empty", "size min/median/max", "inertia", "iters", "seconds"):
        table.add_column(column, justify="left" if column == "status" else "right", no_wrap=True)
    for o in report.outcomes:
        sizes = f"{o.min_size:,}/{o.median_size:g}/{o.max_size:,}"
        label = o.name if "-" in o.name else f"{o.k:,}"  # a set of added images: k16-coral
        table.add_row(label, o.status, f"{o.empty:,}", sizes, f"{o.inertia:.6g}", str(o.iterations),
                      f"{o.seconds:.2f}")
    out.print(table)
