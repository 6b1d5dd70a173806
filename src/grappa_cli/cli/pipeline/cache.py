"""``grappa cache build | info | clear``: the decode-once image cache of the training set."""

from __future__ import annotations

from typing import Annotated

import typer

from grappa_cli.cli.common import Flag, ForceOption, JsonOption, ProjectOption, print_json, resolve_project

app = typer.Typer(
    help="Decode the training images once into the store, so that training reads pixels instead of JPEGs.",
    no_args_is_help=True,
)

YesOption = Annotated[bool, Flag("--yes", "-y", help="Do not ask for confirmation.")]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _confirm(question: str) -> bool:
    from grappa_cli.cli.clickcompat import Abort
    from grappa_cli.errors import UsageError

    try:
        return typer.confirm(question, default=False, err=True)
    except Abort:  # end of input: nobody to ask
        raise UsageError("cannot ask for confirmation (no input)", hint="pass --yes") from None


@app.command("build")
def build(
    ctx: typer.Context,
    size: Annotated[int | None, typer.Option(min=1, help="Side S of the cached squares in pixels (default: the "
                                             "backbone's input_size / crop_pct, e.g. 248).",
                                             show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding processes (default: data.num_workers).",
                                                show_default=False)] = None,
    force: ForceOption = False,
    yes: YesOption = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build the image cache of the training set (resumable; rerun after an interruption to continue)."""
    from rich.table import Table

    from grappa_cli.console import RichReporter, err, hint, out, warn
    from grappa_cli.errors import GrappaError
    from grappa_cli.pipeline.stages import cache as stage

    proj = resolve_project(ctx, project)
    options = stage.CacheOptions(size=size, num_workers=workers, force=force)
    plan = stage.plan(proj, options)
    if plan.state == "complete" and not force:
        if as_json:
            print_json({**plan.to_dict(), "skipped": True})
        else:
            out.print(f"{plan.key} is already complete ({plan.images:,} images at {plan.size}px).",
                      highlight=False)
        return
    if plan.state == "grow":
        err.print(f"{plan.key} grows by the {plan.to_decode:,} images added to the training set since it was "
                  f"built (the {plan.grown_from:,} it holds are kept).", highlight=False)
    err.print(
        f"{plan.key}: {plan.images:,} images at {plan.size}x{plan.size} take "
        f"{human_bytes(plan.raw_bytes)} uncompressed, about {human_bytes(plan.estimated_bytes)} on disk "
        f"(compression estimated on a sample)"
        + ("; resuming a partial build." if plan.state == "partial" else "."),
        highlight=False,
    )
    if not yes and not _confirm("Build the cache?"):
        raise GrappaError("cancelled; nothing was written", hint="pass --yes to build without asking")
    with proj.lock("cache build"):  # build re-checks the state under the lock
        result = stage.build(proj, plan, options, RichReporter())
    proj.record_run("cache build", key=result.key, size=result.size, images=result.images)
    if as_json:
        print_json({**plan.to_dict(), "built": result.built, "bad": result.bad, "seconds": result.seconds})
        return
    table = Table(title="image cache")
    for column in ("cache", "images", "bad", "size", "built now", "seconds", "images/s"):
        table.add_column(column)
    table.add_row(result.key, f"{result.images:,}", str(len(result.bad)), f"{result.size}px", f"{result.built:,}",
                  f"{result.seconds:.1f}", f"{result.images_per_second:,.1f}")
    out.print(table)
    for item in result.bad[:20]:
        warn(f"skipped unreadable image {item['path']}: {item['error']}")
    if len(result.bad) > 20:
        warn(f"... and {len(result.bad) - 20} more unreadable images (see `grappa cache info --json`)")
    hint(f"{result.key} is ready: `grappa cache info` describes it, `grappa cache clear` removes it.")


@app.command("info")
def info(ctx: typer.Context, project: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Show the caches in the store: images, unreadable files, size on disk, whether they are stale."""
    from rich.table import Table

    from grappa_cli.console import out
    from grappa_cli.pipeline.stages import cache as stage

    entries = stage.info(resolve_project(ctx, project))
    if as_json:
        print_json([e.to_dict() for e in entries])
        return
    if not entries:
        out.print("No image cache yet; `grappa cache build` makes one.")
        return
    table = Table(title="image caches")
    for column in ("cache", "state", "images", "bad", "size", "on disk", "created"):
        table.add_column(column)
    for e in entries:
        state = "stale (training set changed)" if e.stale else e.state
        if e.grows_by:
            state += f", {e.grows_by:,} to add"  # training images added since: `grappa cache build` adds them
        table.add_row(e.key, state, f"{e.images:,}", str(e.bad), f"{e.size}px", human_bytes(e.bytes_on_disk),
                      e.created)
    out.print(table)


@app.command("clear")
def clear(
    ctx: typer.Context,
    name: Annotated[list[str] | None, typer.Argument(help="Caches to delete (default: all).",
                                                     show_default=False)] = None,
    yes: YesOption = False,
    project: ProjectOption = None,
) -> None:
    """Delete image caches from the store (training then decodes the images again)."""
    from grappa_cli.console import out
    from grappa_cli.errors import GrappaError
    from grappa_cli.pipeline.stages import cache as stage

    proj = resolve_project(ctx, project)
    entries = {e.key.split("/", 1)[1]: e for e in stage.info(proj)}
    chosen = name or sorted(entries)
    if not chosen:
        out.print("No image cache to delete.")
        return
    total = sum(entries[n].bytes_on_disk for n in chosen if n in entries)
    if not yes and not _confirm(f"Delete {', '.join(chosen)} ({human_bytes(total)})?"):
        raise GrappaError("cancelled; nothing was deleted", hint="pass --yes to delete without asking")
    with proj.lock("cache clear"):
        removed = stage.clear(proj, list(chosen))
    proj.record_run("cache clear", removed=removed)
    out.print(f"Deleted {', '.join(removed)} ({human_bytes(total)}).", highlight=False)
