"""``grappa export``: write a project model to one stand-alone safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grappa_cli.cli.common import Flag, JsonOption, ProjectOption, print_json, resolve_project


def export(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name: backbone, adaptor:k<K> or fused:<strategy>; with one "
                                         "argument, the file to write, and the project's default model "
                                         "(fused:avg, else fused:neighbor, ...) is exported.",
                                         show_default=False)],
    output: Annotated[Path | None, typer.Argument(help="File to write, e.g. model.safetensors.",
                                                  show_default=False)] = None,
    no_backbone: Annotated[bool, Flag("--no-backbone", help="Leave the backbone's weights out (a small "
                                              "file; loading it then needs the weights from elsewhere).")] = False,
    force: Annotated[bool, Flag("--force", help="Overwrite OUTPUT if it exists.")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="safetensors or onnx (default: from OUTPUT's "
                                            "extension).", show_default=False)] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export a model (backbone, adaptors, fusion, preprocessing) to a safetensors file `grappa_cli.load_model`
    reads, or to an ONNX graph that onnxruntime runs."""
    from grappa_cli.console import hint, out
    from grappa_cli.serving.export import check_output, export_model, output_format

    proj = resolve_project(ctx, project)
    if output is None:  # `grappa export FILE`: the project's default model
        from grappa_cli.serving.gallery import default_model

        model, output = default_model(proj), Path(model)
    check_output(output, force)  # before building anything: a directory, an existing file
    output_format(output, fmt)  # and an unknown extension are errors
    existed = output.exists()
    result = export_model(proj, model, output, include_backbone=not no_backbone, force=force, fmt=fmt)
    try:
        proj.record_run("export", model=result.model, path=result.path, sha256=result.sha256)
    except OSError:
        if not existed:  # a failed command leaves no new file behind
            output.unlink(missing_ok=True)
        raise
    if as_json:
        print_json(result.__dict__)
        return
    size = result.bytes / 2**20
    if result.format == "onnx":
        out.print(f"{result.model} -> {result.path} (ONNX, {size:.1f} MiB; backbone {result.model_id}, "
                  f"{result.num_sets} adaptor sets, D = {result.embed_dim}; preprocessing in its metadata)",
                  highlight=False)
        out.print(f"sha256 {result.sha256}", highlight=False)
        hint("Run it with onnxruntime: docs/search.md, 'Use the model elsewhere'.")
        return
    what = "with" if result.includes_backbone else "WITHOUT"
    out.print(f"{result.model} -> {result.path} ({size:.1f} MiB, {what} backbone weights; "
              f"backbone {result.model_id}, {result.num_sets} adaptor sets, D = {result.embed_dim})",
              highlight=False)
    out.print(f"sha256 {result.sha256}", highlight=False)
    hint("Load it with `from grappa_cli import load_model; model, transform = load_model(PATH)`.")
