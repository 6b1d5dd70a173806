"""``grappa search``: the gallery images closest to query images.

Queries are embedded with the model the index was built with, through the same
preprocessing (the backbone's evaluation transform, the same JPEG draft size) and the same
:class:`~grappa_cli.model.export.EmbeddingModel`, so a gallery image used as a query
scores ~1 against itself. Before searching, the model is checked against the one recorded
in the index's sidecar: if its backbone, preprocessing, adaptor sets or fusion changed
since, the gallery embeddings no longer match it and the index is stale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from grappa_cli.errors import DataError, GrappaError, StoreError
from grappa_cli.project import Project

if TYPE_CHECKING:
    import torch

    from grappa_cli.runtime import Precision
    from grappa_cli.serving.gallery import Sidecar
    from grappa_cli.serving.vector_index import IndexParams


@dataclass
class Match:
    rank: int
    path: str
    score: float


@dataclass
class QueryResult:
    query: str
    matches: list[Match] = field(default_factory=list)


@dataclass
class SearchResult:
    name: str
    model: str
    index: IndexParams
    k: int
    results: list[QueryResult]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _stale(sidecar: Sidecar, why: str) -> StoreError:
    return StoreError(
        f"index {sidecar['name']!r} is stale: {why}",
        hint=f"rerun `grappa index {sidecar.get('gallery', 'GALLERY_DIR')} --name {sidecar['name']} "
             f"--model {sidecar['model']} --force`",
    )


def embed_queries(paths: list[str], embedder: torch.nn.Module, data_config: dict[str, Any], *, device: torch.device,
                  amp: bool | Precision, batch_size: int = 64) -> np.ndarray:
    """float32 embeddings of the query images; an unreadable one is an error, not a skip."""
    import torch

    from grappa_cli.data.images import ImageDataset, decode_min_side
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.runtime import autocast

    dataset = ImageDataset(paths, eval_transform(data_config), min_side=decode_min_side(data_config))
    images = []
    for position in range(len(dataset)):
        sample = dataset[position]
        if sample.image is None:
            raise DataError(f"cannot read query image {paths[position]} ({sample.error})",
                            hint="pass readable image files")
        images.append(sample.image)
    embedder = embedder.to(device).eval()
    out = []
    with torch.inference_mode(), autocast(device, amp):
        for start in range(0, len(images), batch_size):
            batch = torch.stack(images[start:start + batch_size]).to(device)
            out.append(embedder(batch).float().cpu().numpy())
    return np.concatenate(out)


def search_gallery(project: Project, queries: list[str | Path], *, k: int = 10, name: str | None = None,
                   nprobe: int | None = None, ef_search: int | None = None,
                   device: str | None = None) -> SearchResult:
    """Top-``k`` gallery images for each query image, with cosine similarities.

    A concurrent ``grappa index --force`` swaps in a new generation and then removes the
    old one; a search that read the old sidecar and lost its files starts over once on the
    new sidecar.
    """
    from grappa_cli.serving.gallery import read_sidecar, require_index

    for attempt in range(3):
        seen = require_index(project, name)
        try:
            return _search_once(project, queries, k=k, name=name, nprobe=nprobe, ef_search=ef_search,
                                device=device)
        except (GrappaError, OSError, KeyError):
            if attempt == 2 or read_sidecar(project, seen["name"]) == seen:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _search_once(project: Project, queries: list[str | Path], *, k: int, name: str | None,
                 nprobe: int | None, ef_search: int | None, device: str | None) -> SearchResult:
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.model.export import EmbeddingModel
    from grappa_cli.pipeline.stages import models
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.runtime import Precision, resolve_device
    from grappa_cli.serving.gallery import index_file, require_index
    from grappa_cli.serving.vector_index import configure_search, load_index, search

    sidecar = require_index(project, name)
    name = sidecar["name"]
    paths = [str(Path(q).expanduser().resolve()) for q in queries]
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"query image {path} does not exist", hint="pass image files")

    store = project.store(mode="r")
    group = store.provenance(sidecar["store_key"]) or {}
    if not group.get("complete") or group.get("fingerprint") != sidecar.get("embeddings_fingerprint") \
            or group.get("completed") != sidecar.get("embeddings_completed"):
        raise _stale(sidecar, f"its gallery embeddings ({sidecar['store_key']}) were changed or are incomplete")

    config = project.config()
    ref = models.parse(sidecar["model"])
    backbone = build_backbone(backbone_spec(config))
    try:
        current = models.fingerprint(project, ref, backbone)
    except StoreError:
        raise _stale(sidecar, f"its model {ref.name!r} no longer exists in the project") from None
    if current != sidecar.get("model_fingerprint"):
        if ref.artifact is not None and "model_weights" not in sidecar:
            raise _stale(sidecar, "it was made by an older grappa that did not record the model's weights, so "
                                  "it cannot be checked against them")
        if backbone.model_id != sidecar.get("model_id"):
            what = "its backbone"
        elif models.weights_digest(project, ref) != sidecar.get("model_weights"):
            what = "the weights of its adaptor sets or fusion"
        else:
            what = "its adaptor sets or fusion"
        raise _stale(sidecar, f"model {ref.name!r} changed since the gallery was embedded ({what})")

    index = load_index(index_file(project, sidecar))
    if index.ntotal != sidecar.get("vectors") or index.d != sidecar.get("dim"):
        raise _stale(sidecar, f"{index_file(project, sidecar).name} does not match its sidecar")
    configure_search(index, nprobe=nprobe, ef_search=ef_search)

    embedder = EmbeddingModel(models.load(project, ref, backbone), name=ref.name)
    dev = resolve_device(device or config.runtime.device)
    vectors = embed_queries(paths, embedder, backbone.data_config, device=dev, amp=Precision.of(config.runtime))
    scores, rows = search(index, vectors, k)
    found = np.unique(rows[rows >= 0])
    names: np.ndarray | list[str] = store.read(sidecar["paths"], found) if len(found) else []
    gallery_paths = {int(row): str(path) for row, path in zip(found, names, strict=True)}
    results = []
    for query, row_scores, row_ids in zip(paths, scores, rows, strict=True):
        matches = [Match(rank + 1, gallery_paths[int(r)], float(s))
                   for rank, (s, r) in enumerate(zip(row_scores, row_ids, strict=True)) if r >= 0]
        results.append(QueryResult(query, matches))
    params = sidecar["index"].copy()
    if nprobe is not None and params.get("kind") == "ivf":
        params["nprobe"] = min(nprobe, params["nlist"])
    if ef_search is not None and params.get("kind") == "hnsw":
        params["ef_search"] = ef_search
    return SearchResult(name, ref.name, params, k, results)
