"""faiss indexes over L2-normalised embeddings: exact, IVF-Flat and HNSW.

Embeddings are unit vectors, so the inner product is the cosine similarity and every index
uses the inner-product metric:

* ``flat`` (``IndexFlatIP``): exact; search costs ``n * D`` multiply-adds per query. The
  right choice up to a few hundred thousand images, and the reference the others are
  measured against.
* ``ivf`` (``IndexIVFFlat``): k-means (``nlist`` lists, default ``4 * sqrt(n)``) trained on
  the gallery; a query scans only the ``nprobe`` lists whose centroids are closest.
  Roughly ``nlist / nprobe`` times less work than flat; recall grows with ``nprobe``
  (``nprobe = nlist`` is exact). A vector always lies in its own nearest list, so an image
  of the gallery used as a query finds itself first.
* ``hnsw`` (``IndexHNSWFlat``): a navigable small-world graph (``M`` links per vector);
  search cost grows with ``log n`` and ``ef_search``, recall with ``ef_search``. Fastest
  at high recall on large galleries, but building is slow and the graph costs memory
  (about ``M * 8`` bytes per vector on top of the vectors).

Every index is wrapped in ``IndexIDMap`` so a search returns the gallery's store rows
(unreadable images leave holes). Files are written through a temporary sibling and an
atomic rename.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Required, TypedDict, cast

import numpy as np

from grappa_cli.errors import GrappaError, UsageError

if TYPE_CHECKING:
    import faiss

INDEX_TYPES = ("flat", "ivf", "hnsw")


class IndexParams(TypedDict, total=False):
    """The settings of a built index that matter for its kind (:meth:`IndexSettings.params`)."""

    kind: Required[str]
    nlist: int
    nprobe: int
    hnsw_m: int
    ef_construction: int
    ef_search: int


@dataclass
class IndexSettings:
    """How to build an index (and the search-time defaults stored with it).

    ``None`` fields take their defaults from the gallery size (:meth:`resolved`).
    """

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise UsageError(f"unknown index type {self.kind!r}", hint=f"use one of {', '.join(INDEX_TYPES)}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")

    def resolved(self, n: int) -> IndexSettings:
        """Settings with every default filled in for a gallery of ``n`` vectors."""
        if self.kind != "ivf":
            return IndexSettings(self.kind, None, None, self.hnsw_m, self.ef_construction, self.ef_search)
        nlist = min(self.nlist or default_nlist(n), max(n, 1))
        nprobe = min(self.nprobe or default_nprobe(nlist), nlist)
        return IndexSettings("ivf", nlist, nprobe, self.hnsw_m, self.ef_construction, self.ef_search)

    def params(self) -> IndexParams:
        """The settings that matter for this kind (what the sidecar records)."""
        values = asdict(self)
        keep = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("hnsw_m", "ef_construction", "ef_search")}
        return cast(IndexParams, {"kind": self.kind, **{k: values[k] for k in keep[self.kind]}})


def default_nlist(n: int) -> int:
    """``4 * sqrt(n)`` inverted lists, the usual rule of thumb for IVF."""
    return max(1, round(4 * math.sqrt(max(n, 1))))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query: ``sqrt(nlist)``, at least 16 (all of them for small galleries)."""
    return min(nlist, max(16, round(math.sqrt(nlist))))


def _empty(settings: IndexSettings, dim: int) -> faiss.Index:
    import faiss

    if settings.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if settings.kind == "ivf":
        assert settings.nlist is not None and settings.nprobe is not None  # IndexSettings.resolved fills them
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, int(settings.nlist), faiss.METRIC_INNER_PRODUCT)
        ivf.cp.min_points_per_centroid = 1  # small galleries are allowed; faiss would print a warning
        ivf.nprobe = int(settings.nprobe)
        return ivf
    hnsw = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = settings.ef_construction
    hnsw.hnsw.efSearch = settings.ef_search
    return hnsw


def build_index(
    settings: IndexSettings, dim: int, batches: Iterable[tuple[np.ndarray, np.ndarray]],
    training: np.ndarray | None = None,
) -> faiss.IndexIDMap:
    """An index of the ``(rows, vectors)`` batches; IVF is first trained on ``training``.

    Vectors are L2-normalised again here (stored float16/32 rounding aside they already are).
    """
    import faiss

    inner = _empty(settings, dim)
    if not inner.is_trained:
        if training is None or not len(training):
            raise ValueError("an IVF index needs training vectors")
        sample = np.ascontiguousarray(training, dtype=np.float32)
        faiss.normalize_L2(sample)
        inner.train(sample)
    index = faiss.IndexIDMap(inner)
    for rows, vectors in batches:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        faiss.normalize_L2(x)
        index.add_with_ids(x, np.ascontiguousarray(rows, dtype=np.int64))
    return index


def configure_search(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set search-time knobs on a loaded index (ignored where they do not apply)."""
    import faiss

    inner = faiss.downcast_index(cast("faiss.IndexIDMap", index).index) if hasattr(index, "id_map") else index
    if nprobe is not None and isinstance(inner, faiss.IndexIVF):
        inner.nprobe = min(int(nprobe), inner.nlist)
    if ef_search is not None and isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = int(ef_search)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, rows) per query; rows are -1 where the index holds fewer than k."""
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    faiss.normalize_L2(q)
    scores, rows = index.search(q, int(k))
    return scores, rows


def save_index(index: faiss.Index, path: Path) -> None:
    """Write ``index`` to ``path`` atomically."""
    import faiss

    from grappa_cli.storage.fsutil import atomic_write_with

    atomic_write_with(Path(path), lambda tmp: faiss.write_index(index, str(tmp)))


def load_index(path: Path) -> faiss.Index:
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise GrappaError(f"{path} is not a readable faiss index ({str(exc).splitlines()[0]})",
                          hint="rebuild it with `grappa index DIR --force`") from None
