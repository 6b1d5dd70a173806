"""``grappa embed``: the embeddings of a folder or of a task as a Parquet or NumPy file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grappa_cli.cli.common import (
    DeviceOption,
    ForceOption,
    JsonOption,
    ProjectOption,
    WorkersOption,
    print_json,
    resolve_project,
)


def embed(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A folder of images (searched recursively) or a task's name.",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write: .parquet (path and embedding "
                                         "per row) or .npy (with a .paths.txt beside it).", show_default=False)],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model: backbone, adaptor:k<K> or "
                                              "fused:<strategy> (default: the project's default model, "
                                              "fused:avg when it exists).", show_default=False)] = None,
    split: Annotated[str, typer.Option(help="For a task: its test or train split.")] = "test",
    device: DeviceOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass.",
                                                   show_default=False)] = None,
    workers: WorkersOption = None,
    force: ForceOption = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Embed every image of a folder (or of a task's split) with a project model and write them to a file
    that pandas, polars, DuckDB or NumPy read without grappa."""
    from grappa_cli.console import RichReporter, hint, out, warn
    from grappa_cli.errors import UsageError
    from grappa_cli.serving.embeddings_out import embed_to_file, output_format
    from grappa_cli.serving.export import check_output

    if split not in ("test", "train"):
        raise UsageError(f"--split must be test or train (got {split!r})", hint="pass --split test or --split train")
    output_format(output)  # before building anything
    check_output(output, force)
    proj = resolve_project(ctx, project)
    with proj.lock("embed"):
        result = embed_to_file(proj, target, output, model=model, split=split, force=force, device=device,
                               batch_size=batch_size, num_workers=workers, reporter=RichReporter())
    if as_json:
        print_json(result.__dict__)
        return
    for item in result.bad[:20]:
        warn(f"skipped unreadable image {item.get('path')}: {item.get('error')}")
    if len(result.bad) > 20:
        warn(f"... and {len(result.bad) - 20} more unreadable images (see `grappa embed ... --json`)")
    out.print(f"{result.model}: {result.rows} of {result.images} images -> {result.path} ({result.format}, "
              f"D = {result.dim})", highlight=False)
    if result.format == "parquet":
        hint("Read it with pandas.read_parquet(PATH) or DuckDB: SELECT path, embedding FROM 'PATH'.")
