"""``grappa index`` and ``grappa search``: image search over a gallery folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grappa_cli.cli.choices import IndexType, value
from grappa_cli.cli.common import (
    ForceOption,
    JsonOption,
    ProjectOption,
    WorkersOption,
    launch_rank,
    print_json,
    resolve_project,
)

DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default: runtime.device in "
                                                  "grappa.toml).", show_default=False)]


def index(
    ctx: typer.Context,
    gallery: Annotated[Path, typer.Argument(help="Folder of gallery images (searched recursively).",
                                            show_default=False)],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model: backbone, adaptor:k<K> or "
                                              "fused:<strategy> (default: fused:avg, else "
                                              "fused:neighbor, else fused:route, else fused:transform, else "
                                              "backbone).", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", help="Index name (default: `default`); one gallery per "
                                             "name.", show_default=False)] = None,
    index_type: Annotated[IndexType, typer.Option("--index", help="flat (exact), ivf or hnsw (approximate, for "
                                                  "millions of images).")] = IndexType.flat,
    nlist: Annotated[int | None, typer.Option(min=1, help="ivf: number of lists (default: 4*sqrt(n)).",
                                              show_default=False)] = None,
    nprobe: Annotated[int | None, typer.Option(min=1, help="ivf: lists scanned per query, stored with the index "
                                               "(default: max(16, sqrt(nlist)); more is slower and more exact).",
                                               show_default=False)] = None,
    hnsw_m: Annotated[int, typer.Option(min=2, help="hnsw: links per vector.")] = 32,
    ef_search: Annotated[int | None, typer.Option(min=1, help="hnsw: candidate list size per query, stored with "
                                                  "the index (default: 128; more is slower and more exact).",
                                                  show_default=False)] = None,
    device: DeviceOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch.", show_default=False)] = None,
    workers: WorkersOption = None,
    force: ForceOption = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Embed a gallery folder and build a faiss index over it (resumable; rerun to continue)."""
    from grappa_cli.console import RichReporter, hint, out, warn
    from grappa_cli.serving.gallery import DEFAULT_NAME, IndexOptions, build_gallery_index
    from grappa_cli.serving.vector_index import IndexSettings

    proj = resolve_project(ctx, project)
    settings = IndexSettings(value(index_type), nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                             ef_search=ef_search if ef_search is not None else 128)
    options = IndexOptions(model=model, name=name or DEFAULT_NAME, settings=settings, device=device,
                           batch_size=batch_size, num_workers=workers, force=force)
    if launch_rank() != 0:
        build_gallery_index(proj, gallery, options, None)
        return
    with proj.lock("index"):
        result = build_gallery_index(proj, gallery, options, RichReporter())
    if result is None:
        return
    proj.record_run("index", name=result.name, model=result.model, gallery=result.gallery, index=result.index)
    if as_json:
        print_json(result.__dict__)
    else:
        state = "already complete" if result.index_skipped else f"built in {result.index_seconds:.1f} s"
        embed = "embeddings already complete" if result.embedding_skipped else \
            f"embedded in {result.embed_seconds:.1f} s"
        params = ", ".join(f"{k}={v}" for k, v in result.index.items() if k != "kind")
        out.print(f"index {result.name!r}: {result.vectors} of {result.images} images from {result.gallery} "
                  f"with {result.model} (D = {result.dim}); {embed}; {result.index['kind']} index"
                  f"{f' ({params})' if params else ''} {state} -> {result.index_path}", highlight=False)
    for item in result.bad[:20]:
        warn(f"skipped unreadable image {item['path']}: {item['error']}")
    if len(result.bad) > 20:
        warn(f"... and {len(result.bad) - 20} more unreadable images (see `grappa index ... --json`)")
    flag = "" if result.name == DEFAULT_NAME else f" --name {result.name}"
    if not as_json:
        hint(f"Next: `grappa search IMAGE{flag}`.")


def search(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(help="Query image files.", show_default=False)],
    k: Annotated[int, typer.Option("--top", "-n", "--top-k", min=1, help="Results per query.")] = 10,
    name: Annotated[str | None, typer.Option("--name", help="Index to search (default: `default`, or the only "
                                             "index).", show_default=False)] = None,
    nprobe: Annotated[int | None, typer.Option(min=1, help="ivf: lists scanned per query (default: the value "
                                               "stored with the index).", show_default=False)] = None,
    ef_search: Annotated[int | None, typer.Option(min=1, help="hnsw: candidate list size per query (default: the "
                                                  "value stored with the index).", show_default=False)] = None,
    device: DeviceOption = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page of the queries and their "
                                              "results (thumbnails in a <page>_files folder beside it).",
                                              show_default=False)] = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Find the gallery images most similar to each query image (cosine similarity)."""
    from rich.markup import escape
    from rich.table import Table

    from grappa_cli.console import out
    from grappa_cli.serving.search import search_gallery

    proj = resolve_project(ctx, project)
    result = search_gallery(proj, list(images), k=k, name=name, nprobe=nprobe, ef_search=ef_search, device=device)
    if html is not None:
        from grappa_cli.errors import UsageError
        from grappa_cli.reporting.page import write_search_page

        if html.suffix.lower() not in (".html", ".htm"):
            raise UsageError(f"--html needs a file name ending in .html (got {str(html)!r})")
        page = write_search_page(result, html)
        if not as_json:
            out.print(f"wrote {escape(str(page.path))}", highlight=False)
    if as_json:
        print_json(result.to_dict())
        return
    for query in result.results:
        table = Table(title=escape(f"{query.query}  ({result.model}, index {result.name!r}, "
                                   f"{result.index['kind']})"), title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("gallery image")
        for match in query.matches:
            table.add_row(str(match.rank), f"{match.score:.4f}", escape(match.path))
        out.print(table)
