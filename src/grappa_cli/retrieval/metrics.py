"""Leave-one-out retrieval metrics: MAP@R, R-Precision, Recall@k (Musgrave et al., 2020).

The evaluation protocol of the paper (section 4.1): every image of a test split is a query
once and ranks all *other* images of the split by cosine similarity; an image is relevant
when it has the query's class. The definitions are those of pytorch-metric-learning's
``AccuracyCalculator`` (``avg_of_avgs=False``, reference = query set):

* the query itself is removed from its ranking **by index** (an exact duplicate of the
  query stays in the ranking, where it is a perfect match);
* ``R`` = number of other images of the query's class; a query whose class has no other
  image is skipped (``num_skipped``) but its image stays in the gallery of the others;
* ``r_precision`` = (relevant among the first R) / R;
* ``map@r`` = (1/R) * sum over the first R ranks i with a relevant item of precision@i;
* ``recall@k`` = 1 when a relevant item is among the first k (the DML "Recall@K"); for
  k = 1 it equals pytorch-metric-learning's ``precision_at_1``;
* each metric is the plain mean over the evaluated queries.

Ranking rule (what makes results exactly repeatable). Embeddings are L2-normalised in
float64 and rounded to multiples of 2^-26 per component (a change of at most 7.5e-9 per
component, below float32 resolution). Every similarity of two such vectors is then a
multiple of 2^-52 below 2 in magnitude, which float64 represents exactly, and so is every
partial sum: any summation order, BLAS, CPU or GPU gives the *same* number. Neighbours
are ordered by similarity, descending, and equal similarities by index, ascending.
faiss (``IndexFlatIP``, exact inner product, on the GPU when available) only proposes
candidates: for each query it returns the top ``depth + 1 + margin`` by its float32
scores, which are within a proven bound (``Ranking.eps``) of the exact ones; the
candidates are rescored exactly and sorted by the rule above, and a query whose
``depth``-th exact score is not above the last faiss score by more than that bound
(massive ties, duplicates) is ranked exactly against the whole set. Results therefore do
not depend on ``chunk_size``, thread counts or the faiss build: chunked and unchunked runs
return identical numbers.

Metrics are plugins (hook ``register_metrics``): objects following :class:`Metric` (or
:class:`MetricFamily` for ``name@k`` metrics) that turn a :class:`Neighbors` chunk into one
value per query. :func:`retrieval_metrics` ranks once and evaluates every requested metric
on each chunk, so memory stays bounded by ``chunk_size`` queries times the ranking depth.

Two ways to the same numbers. MAP@R, R-Precision and Recall@k read only *which ranks hold
a relevant item*; when every requested metric says so (``relevance_only = True`` and a
``query_depth(r)`` method), :func:`retrieval_metrics` computes that pattern exactly with
:mod:`grappa_cli.retrieval.relevance` (a blocked, symmetric float32 Gram matrix on the grid vectors,
candidates above per-query thresholds, exact rescoring of near ties only; torch, on the GPU
when there is one), without ranking the items themselves. Metrics that read indices or
scores, and :func:`neighbors`, use the faiss ranking described above.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from grappa_cli.errors import DataError, PluginError

#: Components are rounded to multiples of 2**-GRID_BITS (see the module docstring).
GRID_BITS = 26
#: Default metrics besides the Recall@k values asked through ``recall_at``.
DEFAULT_METRICS = ("map@r", "r_precision")
#: Extra candidates faiss returns beyond the ranking depth, so that near-ties at the
#: boundary rarely force an exact full-row ranking.
MIN_MARGIN = 16
#: Bytes of scratch memory used when ranking queries exactly against every item.
RESCORE_BUDGET = 64 << 20


@dataclass(frozen=True)
class Neighbors:
    """The ranked neighbours of a chunk of evaluated queries (self excluded, best first).

    Every array has one row per query. Class ids are 0..C-1 in the order of
    ``numpy.unique`` over the labels given to :func:`retrieval_metrics`.
    """

    query_indices: np.ndarray  #: int64 [q]: index of each query in the evaluated set
    query_labels: np.ndarray  #: int64 [q]: class id of each query
    r: np.ndarray  #: int64 [q]: R, the number of other images of the query's class (>= 1)
    indices: np.ndarray  #: int64 [q, depth]: indices of the neighbours, best first
    labels: np.ndarray  #: int64 [q, depth]: class ids of the neighbours
    scores: np.ndarray  #: float64 [q, depth]: exact cosine similarities (see the ranking rule)
    max_r: int  #: the largest R over *all* evaluated queries (the same for every chunk)

    @property
    def depth(self) -> int:
        return int(self.labels.shape[1])

    @property
    def relevant(self) -> np.ndarray:
        """bool [q, depth]: whether each neighbour has the query's class."""
        return self.labels == self.query_labels[:, None]

    def __len__(self) -> int:
        return int(self.query_labels.shape[0])


@runtime_checkable
class Metric(Protocol):
    """A retrieval metric plugin.

    ``depth(max_r)`` is how many ranked neighbours it reads, given the largest R of the
    evaluated queries; ``compute`` returns one float64 value per query of the chunk (the
    reported metric is their mean over all evaluated queries).
    """

    name: str
    description: str

    def depth(self, max_r: int) -> int: ...

    def compute(self, neighbors: Neighbors) -> np.ndarray: ...


@runtime_checkable
class MetricFamily(Protocol):
    """Metrics with an integer parameter, registered once as ``"<base>@k"``.

    ``at(5)`` returns the :class:`Metric` named ``"<base>@5"``.
    """

    name: str
    description: str

    def at(self, k: int) -> Metric: ...


_AT_K = re.compile(r"^(?P<base>.+)@(?P<k>\d+)$")


def resolve_metrics(specs: Sequence[str | Metric]) -> list[Metric]:
    """Turn metric names (``"map@r"``, ``"recall@5"``) or objects into metric objects.

    Names are looked up among the registered metric plugins; ``"<base>@<int>"`` falls back
    to the family ``"<base>@k"``.
    """
    from grappa_cli.plugins import registry

    reg = None
    metrics: list[Metric] = []
    for spec in specs:
        if not isinstance(spec, str):
            metrics.append(spec)
            continue
        reg = reg or registry("metrics")
        match = _AT_K.match(spec)
        if spec not in reg and match and f"{match['base']}@k" in reg:
            k = int(match["k"])
            if k < 1:
                raise DataError(f"metric {spec!r}: k must be >= 1")
            metrics.append(reg.get(f"{match['base']}@k").at(k))
        else:
            metrics.append(reg.get(spec))
    return metrics


def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    *,
    recall_at: Sequence[int] = (1,),
    metrics: Sequence[str | Metric] | None = None,
    chunk_size: int = 512,
    device: str | None = None,
) -> dict[str, float | int]:
    """Leave-one-out retrieval metrics of ``embeddings`` (numpy or torch, [n, D]) and ``labels``.

    Returns ``{metric name: mean over evaluated queries}`` for ``metrics`` (default
    ``map@r`` and ``r_precision``) and ``recall@k`` for each k of ``recall_at``, plus
    ``num_queries`` (queries evaluated) and ``num_skipped`` (queries whose class has no
    other image). ``chunk_size`` queries are ranked at a time (the block size of the Gram
    matrix for relevance-only metrics); ``device`` is ``None``/``"auto"`` (the GPU when torch
    or faiss has one), ``"cpu"`` or ``"cuda[:N]"``.
    """
    specs: list[str | Metric] = list(DEFAULT_METRICS if metrics is None else metrics)
    for k in recall_at:
        if int(k) < 1:
            raise DataError(f"recall_at: k must be >= 1 (got {k})")
        name = f"recall@{int(k)}"
        if name not in [s if isinstance(s, str) else s.name for s in specs]:
            specs.append(name)
    resolved = resolve_metrics(specs)
    if not resolved:
        raise DataError("no metric requested", hint="pass metrics=... or recall_at=...")

    if chunk_size < 1:
        raise DataError(f"chunk_size must be >= 1 (got {chunk_size})")
    ranking = Ranking(embeddings, labels, device=device)
    if ranking.num_queries == 0:
        raise DataError(
            f"none of the {ranking.n} images has another image of its class, so leave-one-out "
            "retrieval has no query",
            hint="evaluate a split whose classes have at least two images",
        )
    if all(getattr(m, "relevance_only", False) for m in resolved):
        chunks: Iterator[Any] = ranking.relevance_chunks(resolved, block=chunk_size)
    else:
        chunks = ranking.chunks(max(m.depth(ranking.max_r) for m in resolved), chunk_size=chunk_size)
    values: dict[str, list[np.ndarray]] = {m.name: [] for m in resolved}
    for chunk in chunks:
        for metric in resolved:
            per_query = np.asarray(metric.compute(chunk), dtype=np.float64)
            if per_query.shape != (len(chunk),):
                raise PluginError(
                    f"metric {metric.name!r} returned shape {per_query.shape} for {len(chunk)} queries",
                    hint="a metric's compute() must return one value per query",
                )
            values[metric.name].append(per_query)
    result: dict[str, float | int] = {
        name: float(np.mean(np.concatenate(parts))) for name, parts in values.items()
    }
    result["num_queries"] = ranking.num_queries
    result["num_skipped"] = ranking.num_skipped
    return result


def neighbors(
    embeddings: Any,
    labels: Any,
    *,
    depth: int | None = None,
    chunk_size: int = 1024,
    device: str | None = None,
) -> Iterator[Neighbors]:
    """The ranked neighbours of every evaluated query, ``chunk_size`` queries at a time.

    ``depth`` defaults to the largest R (what MAP@R and R-Precision read).
    """
    ranking = Ranking(embeddings, labels, device=device)
    yield from ranking.chunks(depth if depth is not None else ranking.max_r, chunk_size=chunk_size)


class Ranking:
    """Normalised embeddings on the exact grid, with their class ids, ready to rank."""

    def __init__(self, embeddings: Any, labels: Any, *, device: str | None = None) -> None:
        x = _as_numpy(embeddings, "embeddings")
        y = _as_numpy(labels, "labels")
        if x.ndim != 2:
            raise DataError(f"embeddings must be a 2-D array [n, D] (got shape {x.shape})")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"labels must be a 1-D array with one label per embedding "
                f"(got shape {y.shape} for {len(x)} embeddings)"
            )
        if x.shape[1] == 0:
            raise DataError("embeddings have dimension 0")
        self.n = int(x.shape[0])
        self.dim = int(x.shape[1])
        #: int32 [n, D]: normalised embeddings in units of 2**-GRID_BITS
        self.grid = _normalise_to_grid(x)
        _, inverse = np.unique(y, return_inverse=True)
        self.labels = inverse.astype(np.int64).reshape(-1)
        counts = np.bincount(self.labels, minlength=1)
        self.r = (counts[self.labels] - 1).astype(np.int64)
        self.queries = np.flatnonzero(self.r > 0)
        self.num_queries = len(self.queries)
        self.num_skipped = self.n - self.num_queries
        self.max_r = int(self.r.max()) if self.n else 0
        self.device = device
        #: bound on |faiss float32 score - exact score|: float32 rounding of the grid values
        #: (2 ulps) plus float32 accumulation over D terms, doubled for safety.
        self.eps = 2.0 * (self.dim + 2) * 2.0**-24
        self._index: Any = None
        self._gpu_resources: Any = None

    def chunks(self, depth: int, *, chunk_size: int = 1024) -> Iterator[Neighbors]:
        """Rank the evaluated queries ``chunk_size`` at a time; each chunk is final."""
        if chunk_size < 1:
            raise DataError(f"chunk_size must be >= 1 (got {chunk_size})")
        if self.num_queries == 0:
            return
        depth = max(1, min(int(depth), self.n - 1))
        k_search = min(self.n, depth + 1 + max(MIN_MARGIN, depth // 32))
        for start in range(0, self.num_queries, chunk_size):
            q = self.queries[start : start + chunk_size]
            idx, scores = self._rank(q, depth, k_search)
            yield Neighbors(
                query_indices=q,
                query_labels=self.labels[q],
                r=self.r[q],
                indices=idx,
                labels=self.labels[idx],
                scores=scores,
                max_r=self.max_r,
            )

    def relevance_chunks(self, metrics: Sequence[Any], *, block: int = 1024) -> Iterator[Any]:
        """Exact relevance of each query's top neighbours (:mod:`grappa_cli.retrieval.relevance`).

        For metrics with ``relevance_only = True``: each needs ``query_depth(r)`` ranks per
        query; the blocked, symmetric Gram computation gives their relevance exactly, without
        ranking the items themselves.
        """
        from grappa_cli.retrieval.relevance import RelevanceChunk, float32_error_bound, top_relevance

        depths = np.zeros(self.n, dtype=np.int64)
        for metric in metrics:
            need = np.broadcast_to(np.asarray(metric.query_depth(self.r[self.queries]), dtype=np.int64),
                                   (self.num_queries,))
            depths[self.queries] = np.maximum(depths[self.queries], need)
        depths[self.queries] = np.clip(depths[self.queries], 1, max(1, self.n - 1))
        device = _torch_device(self.device)
        if device != "cpu":
            block = max(block, 4096)  # a GPU wants large GEMMs
        for q, relevant in top_relevance(
            self.grid, self.labels, depths, eps=float32_error_bound(self.dim), unit=_UNIT, device=device, block=block,
            exact=lambda rows, depth: self._rank_exhaustive(rows, depth)[0],
        ):
            yield RelevanceChunk(query_indices=q, query_labels=self.labels[q], r=self.r[q], relevant=relevant,
                                 max_r=self.max_r)

    # -- ranking -------------------------------------------------------------------------

    def _rank(self, q: np.ndarray, depth: int, k_search: int) -> tuple[np.ndarray, np.ndarray]:
        faiss_scores, cand = self._search(q, k_search)
        exact = self._rescore(q, cand)
        # The query itself (by index) and padding (-1) never rank.
        invalid = (cand == q[:, None]) | (cand < 0)
        deviation = np.abs(np.where(invalid, 0.0, exact - faiss_scores.astype(np.float64)))
        exact[invalid] = -np.inf
        order = _order_rows(exact, cand)[:, :depth]
        idx = np.take_along_axis(cand, order, axis=1)
        scores = np.take_along_axis(exact, order, axis=1)
        if k_search >= self.n:
            unsafe = np.zeros(len(q), dtype=bool)
        else:
            # Items faiss did not return score at most (its last score + eps) exactly.
            last = faiss_scores[:, -1].astype(np.float64)
            unsafe = ~(scores[:, -1] > last + self.eps)
        unsafe |= deviation.max(axis=1) > self.eps  # faiss broke the error bound (e.g. TF32)
        if unsafe.any():
            rows = np.flatnonzero(unsafe)
            idx[rows], scores[rows] = self._rank_exhaustive(q[rows], depth)
        return idx.astype(np.int64), scores

    def _as_float32(self, rows: Any) -> np.ndarray:
        return (self.grid[rows] * np.float32(2.0**-GRID_BITS)).astype(np.float32)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._faiss_index(k)
        scores, cand = index.search(np.ascontiguousarray(self._as_float32(q)), k)
        return scores, cand.astype(np.int64)

    def _faiss_index(self, k: int) -> Any:
        if self._index is not None:
            return self._index
        import faiss

        index: faiss.Index = faiss.IndexFlatIP(self.dim)
        step = max(1, (16 << 20) // (4 * self.dim))
        for s in range(0, self.n, step):
            index.add(np.ascontiguousarray(self._as_float32(slice(s, s + step))))
        gpu = _gpu_id(self.device, faiss)
        if gpu is not None and k <= 2048:  # faiss GPU k-selection limit
            self._gpu_resources = faiss.StandardGpuResources()  # must outlive the index
            index = faiss.index_cpu_to_gpu(self._gpu_resources, gpu, index)
        self._index = index
        return index

    def _rescore(self, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Exact similarities of each query with its candidates (see the module docstring).

        One query at a time: its candidates (k x D float64) stay in cache for the
        matrix-vector product, which is several times faster than a batched product.
        """
        out = np.empty(cand.shape, dtype=np.float64)
        safe = np.where(cand < 0, 0, cand)
        for row, query in enumerate(q):
            out[row] = self.grid[safe[row]].astype(np.float64) @ self.grid[query].astype(np.float64)
        return out * _UNIT

    def _rank_exhaustive(self, q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact ranking against every item (where faiss's candidates may not suffice)."""
        idx = np.empty((len(q), depth), dtype=np.int64)
        scores = np.empty((len(q), depth), dtype=np.float64)
        step = max(1, RESCORE_BUDGET // max(1, self.n * 8))
        base = self.grid.astype(np.float64) if self.n * self.dim <= (4 << 20) else None
        for s in range(0, len(q), step):
            rows = q[s : s + step]
            full = self._exact_rows(rows, base)
            full[np.arange(len(rows)), rows] = -np.inf
            for j, row in enumerate(full):
                top = _top_by_rule(row, depth)
                idx[s + j] = top
                scores[s + j] = row[top]
        return idx, scores

    def _exact_rows(self, rows: np.ndarray, base: np.ndarray | None) -> np.ndarray:
        queries = self.grid[rows].astype(np.float64)
        if base is not None:
            return (queries @ base.T) * _UNIT
        out = np.empty((len(rows), self.n), dtype=np.float64)
        block = 1 << 15
        for b in range(0, self.n, block):
            out[:, b : b + block] = queries @ self.grid[b : b + block].astype(np.float64).T
        return out * _UNIT


#: Value of one unit of a product of two grid integers.
_UNIT = 2.0 ** (-2 * GRID_BITS)


def _order_rows(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per row, the argsort by score descending, then index ascending.

    faiss's candidates arrive nearly sorted, which a stable sort (timsort) handles in
    about linear time; only rows holding exactly equal scores need the two-key sort.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=1)
    tied = ((ranked[:, 1:] == ranked[:, :-1]) & np.isfinite(ranked[:, 1:])).any(axis=1)
    if tied.any():
        rows = np.flatnonzero(tied)
        order[rows] = np.lexsort((indices[rows], -scores[rows]), axis=-1)
    return order


def _top_by_rule(row: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the ``depth`` best items of one exact score row: score desc, index asc."""
    n = len(row)
    if depth >= n:
        top = np.arange(n)
    else:
        part = np.argpartition(-row, depth - 1)[:depth]
        threshold = row[part].min()
        above = np.flatnonzero(row > threshold)
        ties = np.flatnonzero(row == threshold)
        top = np.concatenate([above, ties[: depth - len(above)]])
    return top[np.lexsort((top, -row[top]))][:depth]


def _normalise_to_grid(x: np.ndarray) -> np.ndarray:
    """L2-normalise in float64 and round to integers in units of 2**-GRID_BITS (int32)."""
    out = np.empty(x.shape, dtype=np.int32)
    scale = float(2**GRID_BITS)
    step = max(1, (16 << 20) // max(1, x.shape[1] * 8))
    for s in range(0, len(x), step):
        block = x[s : s + step].astype(np.float64)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad = s + int(np.flatnonzero(~finite)[0])
            raise DataError(f"embedding {bad} contains NaN or infinity", hint="check the model's outputs")
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        norms[norms == 0] = 1.0  # a zero vector stays zero: similarity 0 with everything
        out[s : s + step] = np.rint(block / norms * scale)
    return out


def _as_numpy(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} cannot be read as an array: {exc}") from None


def _torch_device(device: str | None) -> str:
    """The torch device the Gram blocks run on: a GPU when asked for (or ``auto``) and present."""
    if device == "cpu":
        return "cpu"
    if device not in (None, "auto") and not device.startswith("cuda"):
        raise DataError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        return "cpu"  # results are identical on any device
    return "cuda" if device in (None, "auto") else device


def _gpu_id(device: str | None, faiss: Any) -> int | None:
    """The GPU faiss should search on, or None for the CPU."""
    if device == "cpu":
        return None
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if device in (None, "auto"):
        return 0 if has_gpu else None
    if device.startswith("cuda"):
        if not has_gpu:
            return None  # faiss-cpu build: search on the CPU, results are identical
        _, _, number = device.partition(":")
        return int(number) if number else 0
    raise DataError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
