"""Exact relevance of every query's top neighbours from a blocked, symmetric Gram matrix.

MAP@R, R-Precision and Recall@k read only *which ranks hold a relevant item*, not which
item sits at each rank. This module computes that pattern exactly (under the ranking rule
of :mod:`grappa_cli.retrieval.metrics`: exact similarity descending, then index ascending) at the cost
of about half a float32 GEMM of the set with itself:

1. **Thresholds.** Each query scores a fixed random sample of ``sample`` items; the
   ``k0``-th best sampled score, less ``2 eps``, is a threshold ``t`` that almost surely lies
   below the query's ``d``-th best score (``d`` = the depth it needs, e.g. R). ``k0`` is the
   expected number of sampled items among the top ``d`` plus three standard deviations and
   two (about 1.5 d candidates per query at R = 400-1,000; a threshold that fails is caught
   below and costs one row).
2. **Candidates.** The Gram matrix is computed in float32 blocks of ``block x block``. In the
   symmetric mode each block above the diagonal is computed once and read twice: by its rows
   (queries of panel I against items of panel J) and by its columns (queries of J against
   items of I), which halves the multiply-adds of a full ``X @ X.T``. Every score at or above
   the query's threshold is kept as a candidate; a panel's queries are final once all their
   blocks are done. Candidates waiting for later panels are held compactly (uint16 positions
   in their block, float32 score: 8 bytes); when they would exceed ``STASH_BUDGET`` bytes
   (about n x 1.6 d / 4 candidates at the worst moment: for classes of 1,000 beyond ~55,000
   images), row panels are computed against all columns instead: twice the multiply-adds,
   memory bounded by one panel.
3. **Exactness.** float32 scores are within ``eps`` of the exact ones
   (:func:`float32_error_bound`). Let ``T`` be a query's ``d``-th best float32 score.
   Every item of the exact top ``d`` scores at least ``T - 2 eps`` in float32, so when
   ``t <= T - 2 eps`` the candidates contain the exact top ``d`` (otherwise, rarely, the
   query's whole float32 row is computed again and ``t`` set from its own ``d``-th score).
   Candidates sorted by float32 score form *chains*, broken where two neighbours differ by
   more than ``2 eps``: across chains the exact order is the float32 order. A chain whose
   items all have the same relevance gives the same relevance pattern in any order; only
   chains mixing relevant and irrelevant items are rescored exactly (integer dot products of
   the grid vectors in float64) and sorted by the ranking rule.

The result is the exact relevance pattern, so the metrics equal those of the full exact
ranking to the last bit. The Gram blocks, thresholds and selection are torch on the given
device: on a GPU they run there and only candidates come back to the host (on the CPU the
comparison and selection use numpy, about twice as fast there). Candidates are then sorted
on the host as packed ``(row, score, item)`` integers, one plain sort per panel.

On the CPU, ``torch.get_num_threads()`` worker threads share the work (:class:`_Pool`):
each runs whole tasks, a Gram block with its selection or a panel's finishing, with one
torch thread. torch's own intra-op threads would speed up only the matmuls, while the
numpy selection and finishing (about 40 % of the time) ran on one core; and on a loaded
machine, thousands of small two-thread matmuls wait on each other at every barrier. The
tasks' order fixes nothing in the result: each panel's candidates are sorted in full.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Width of the partial products of :func:`gram` (see :func:`float32_error_bound`).
GRAM_CHUNK = 64


def float32_error_bound(dim: int) -> float:
    """Bound on |:func:`gram` similarity - exact similarity| of two grid vectors of dimension ``dim``.

    Rounding the grid values to float32 changes each by at most u = 2^-24 relative. A float32
    dot product of w terms, in *any* summation order (blocked, FMA, split over threads or GPU
    warps), is within gamma_w * sum |a_i b_i| of the exact one, gamma_w = w u / (1 - w u)
    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1). :func:`gram` sums K =
    ceil(D / w) partial products of width w = ``GRAM_CHUNK`` one after the other, so each
    term meets at most w + K - 1 roundings; sum |a_i b_i| <= |a| |b|, and grid vectors have
    norm at most 1 + sqrt(D) 2^-27. Together: (w + K + 1) u (1 + O((w + K) u)), which
    1.01 (w + K + 2) u covers for every D below 10^6 (for D = 384: 5.4x below the bound of
    one D-term dot product). Matmuls must run in true float32 (no TF32), see
    :func:`_exact_float32_matmul`.
    """
    if dim >= 1_000_000:
        raise ValueError("the float32 error bound is stated for dimensions below 1,000,000")
    width = min(dim, GRAM_CHUNK)
    chunks = -(-dim // GRAM_CHUNK)
    return 1.01 * (width + chunks + 2) * 2.0**-24


#: Bytes of candidates the symmetric mode may hold for panels not yet final.
STASH_BUDGET = 192 << 20
#: Bytes held per candidate waiting for a later panel (uint16 row and column in their blocks, float32 score).
_CANDIDATE_BYTES = 8
#: Standard deviations of margin when turning the sample into a threshold.
_SIGMAS = 3.0


@dataclass(frozen=True)
class RelevanceChunk:
    """The exact relevance of the ranked neighbours of a chunk of queries (self excluded).

    ``relevant[i, j]`` says whether the neighbour at rank ``j + 1`` of query
    ``query_indices[i]`` has its class; columns at or past the query's depth are False.
    Metrics that read only relevance (``relevance_only = True``) receive this instead of a
    :class:`~grappa_cli.retrieval.metrics.Neighbors`; it has the same ``query_indices``,
    ``query_labels``, ``r``, ``relevant``, ``max_r`` and ``depth``.
    """

    query_indices: np.ndarray  #: int64 [q]
    query_labels: np.ndarray  #: int64 [q]
    r: np.ndarray  #: int64 [q]: R of each query (>= 1)
    relevant: np.ndarray  #: bool [q, width]
    max_r: int

    @property
    def depth(self) -> int:
        return int(self.relevant.shape[1])

    def __len__(self) -> int:
        return int(self.query_labels.shape[0])


#: Exact ranking of some queries against every item: (query indices, depth) -> indices [q, depth].
ExactRanker = Callable[[np.ndarray, int], np.ndarray]


def top_relevance(
    grid: np.ndarray,
    labels: np.ndarray,
    depths: np.ndarray,
    *,
    eps: float,
    unit: float,
    exact: ExactRanker,
    device: str = "cpu",
    block: int = 1024,
    sample: int = 2048,
    symmetric: bool | None = None,
    workers: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(queries, relevant)`` per panel: exact relevance of each query's top ``depths[q]``.

    ``grid`` int32 [n, D] are the vectors in units of ``sqrt(unit)`` (so that an integer dot
    product times ``unit`` is the exact similarity); ``depths`` int64 [n] is how many ranks
    each item needs as a query (0: not a query). ``relevant`` has ``max(depths)`` columns.
    ``symmetric=None`` chooses the symmetric mode when its candidates fit ``STASH_BUDGET``.
    ``workers`` is how many threads share the blocks and the finishing (see :class:`_Pool`);
    ``None``: ``torch.get_num_threads()`` on the CPU, one on a GPU. Results do not depend on it.
    """
    import torch

    n = int(grid.shape[0])
    width = int(depths.max()) if n else 0
    if width == 0:
        return
    dev = torch.device(device)
    if workers is None:
        workers = torch.get_num_threads() if dev.type == "cpu" else 1
    scale = math.sqrt(unit)
    block = min(max(1, int(block)), 1 << 15)  # local rows and columns fit uint16
    dim = int(grid.shape[1])
    with _exact_float32_matmul(torch), _Pool(torch, workers) as pool:
        g = torch.from_numpy(np.ascontiguousarray(grid)).to(dev)
        local = threading.local()  # per-thread block buffers

        def rows_f32(start: int, stop: int, out) -> torch.Tensor:
            part = out[: stop - start]
            part.copy_(g[start:stop])  # int32 -> float32: one rounding, then an exact scaling
            return part.mul_(scale)

        thresholds, expected = _thresholds(g, depths, eps, scale, sample, block, dev, pool)
        if symmetric is None:
            symmetric = float(expected.sum()) * _CANDIDATE_BYTES / 4 <= STASH_BUDGET
        t_dev = torch.from_numpy(thresholds).to(dev)
        starts = list(range(0, n, block))
        pending: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]] = {s: [] for s in starts}
        is_query = depths > 0

        def one_block(a, si: int, ei: int, sj: int, ej: int, row_queries: bool, col_queries: bool) -> None:
            """Gram block (I, J) and its candidates, read by rows and (symmetric mode) by columns."""
            buffers = getattr(local, "buffers", None)
            if buffers is None:
                buffers = local.buffers = _Buffers(torch, block, dim, dev)
            b = a if sj == si else rows_f32(sj, ej, buffers.cols)
            shape = (ei - si, ej - sj)
            scores = gram(a, b, out=buffers.shaped("scores", shape), part=buffers.shaped("part", shape))
            if sj == si:
                scores.fill_diagonal_(float("nan"))  # the query itself never ranks
            hit = buffers.shaped("hit", shape)
            if row_queries:
                rows, cols, values = _select(scores, t_dev[si:ei, None], hit)
                pending[si].append((rows.astype(np.uint16), cols.astype(np.uint16), values, sj))
            if col_queries:  # the same block, read by its columns
                rows, cols, values = _select(scores, t_dev[None, sj:ej], hit)
                pending[sj].append((cols.astype(np.uint16), rows.astype(np.uint16), values, si))

        def finish(si: int) -> tuple[np.ndarray, np.ndarray] | None:
            """The relevance of panel I's queries, once every block it reads is done."""
            ei = min(n, si + block)
            pieces = pending.pop(si)
            queries = np.flatnonzero(is_query[si:ei]) + si
            if not len(queries):
                return None
            out, unsafe = _finalise(queries, queries - si, pieces, grid, labels, depths, thresholds[queries],
                                    width, eps, unit)
            if len(unsafe):
                out[unsafe] = _redo_exhaustively(queries[unsafe], g, grid, labels, depths, width, eps, unit,
                                                 scale, block, exact)
            return queries, out

        # Row panel I's blocks are queued before panel I-1 (complete once its own row is) is
        # finished: the workers always hold Gram blocks to overlap the finishing with.
        # Two row buffers: panel I's rows are written once the blocks of I-2 are done.
        row_buffers = [torch.empty((block, dim), dtype=torch.float32, device=dev) for _ in range(2)]
        previous: list[Future] = []
        finishing: deque[Future] = deque()
        for i, si in enumerate(starts):
            ei = min(n, si + block)
            row_queries = bool(is_query[si:ei].any())
            a = rows_f32(si, ei, row_buffers[i % 2])
            current = []
            for sj in starts[i:] if symmetric else starts:
                ej = min(n, sj + block)
                col_queries = symmetric and sj != si and bool(is_query[sj:ej].any())
                if row_queries or col_queries:
                    current.append(pool.submit(one_block, a, si, ei, sj, ej, row_queries, col_queries))
            for future in previous:
                future.result()
            if i:
                finishing.append(pool.submit(finish, starts[i - 1]))
            previous = current
            while finishing and (finishing[0].done() or len(finishing) > 2):  # at most two panels in flight
                done = finishing.popleft().result()
                if done is not None:
                    yield done
        for future in previous:
            future.result()
        finishing.append(pool.submit(finish, starts[-1]))
        while finishing:
            done = finishing.popleft().result()
            if done is not None:
                yield done


class _Pool:
    """Threads that share the Gram blocks and the panels' finishing, one torch thread each.

    torch's intra-op threads speed up the matmuls only: the selection and the finishing
    (numpy) would run on one core while the others wait. Here each of ``workers`` threads
    runs whole tasks, a Gram block with its selection or a panel's finishing, with one torch
    thread of its own. torch and numpy release the GIL in their kernels (the arrays are
    large), so the tasks run in parallel and every core works through the whole pipeline.
    With one worker, tasks run at once in the calling thread and torch's thread setting is
    left alone (the path taken on a GPU).
    """

    def __init__(self, torch, workers: int) -> None:
        self._torch = torch
        self.workers = max(1, int(workers))
        self._executor: ThreadPoolExecutor | None = None
        self._threads = 0

    def __enter__(self) -> _Pool:
        if self.workers > 1:
            self._threads = self._torch.get_num_threads()
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="grappa-relevance",
                                                initializer=self._torch.set_num_threads, initargs=(1,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            # torch.set_num_threads(1) in a worker also lowers the default of threads not yet
            # started: restore the caller's setting.
            self._torch.set_num_threads(self._threads)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on a worker; with one worker at once, in this thread.

        An error of a task run at once propagates from here, so that it (or Ctrl-C) stops
        the computation without running the tasks after it.
        """
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: Future = Future()
        future.set_result(fn(*args))
        return future


def _redo_exhaustively(queries: np.ndarray, g, grid: np.ndarray, labels: np.ndarray, depths: np.ndarray,
                       width: int, eps: float, unit: float, scale: float, block: int,
                       exact: ExactRanker) -> np.ndarray:
    """Relevance of queries whose sampled threshold failed, from their full float32 rows.

    The threshold is then each row's own d-th best float32 score less 2 eps, which makes
    the row safe by construction; :data:`ExactRanker` remains for the impossible case.
    """
    import torch

    n = len(depths)
    out = np.zeros((len(queries), width), dtype=bool)
    step = max(1, (16 << 20) // (4 * n))
    for s in range(0, len(queries), step):
        q = queries[s : s + step]
        a = g[torch.from_numpy(q).to(g.device)].to(torch.float32) * scale
        full = torch.empty((len(q), n), dtype=torch.float32, device=g.device)
        for c in range(0, n, block):
            full[:, c : c + block] = gram(a, g[c : c + block].to(torch.float32) * scale)
        full[torch.arange(len(q), device=g.device), torch.from_numpy(q).to(g.device)] = float("nan")
        finite = torch.nan_to_num(full, nan=-float("inf"))
        wanted = _kth_largest(finite, depths[q]) - 2 * eps
        t = _round_down(wanted)
        rows, cols, values = _select(full, torch.from_numpy(t).to(g.device)[:, None],
                                     torch.empty(full.shape, dtype=torch.bool, device=g.device))
        part, unsafe = _finalise(q, np.arange(len(q)), [(rows, cols, values, 0)], grid, labels, depths, t, width,
                                 eps, unit)
        for u in unsafe:  # cannot happen (see above); kept as a last resort
            depth = int(depths[q[u]])
            idx = exact(q[u : u + 1], depth)[0]
            part[u, :depth] = labels[idx] == labels[q[u]]
        out[s : s + step] = part
    return out


class _Buffers:
    """Block-sized tensors allocated once per thread: a fresh allocation per block fragments the heap."""

    def __init__(self, torch, block: int, dim: int, dev) -> None:
        self.cols = torch.empty((block, dim), dtype=torch.float32, device=dev)
        self.flat = {name: torch.empty(block * block, dtype=dtype, device=dev)
                     for name, dtype in (("scores", torch.float32), ("part", torch.float32), ("hit", torch.bool))}

    def shaped(self, name: str, shape: tuple[int, int]):
        """A contiguous [rows, cols] view of buffer ``name``."""
        return self.flat[name][: shape[0] * shape[1]].view(shape)


def gram(a, b, *, out=None, part=None):
    """``a @ b.T`` in float32 as ``GRAM_CHUNK``-wide partial products added one by one.

    Each partial product is its own matmul, so the error bound of
    :func:`float32_error_bound` holds whatever order the BLAS sums in; on a CPU this costs
    about as much as one matmul. ``out`` and ``part`` are optional [len(a), len(b)] buffers.
    """
    import torch

    dim = int(a.shape[1])
    out = torch.mm(a[:, :GRAM_CHUNK], b[:, :GRAM_CHUNK].T, out=out)
    if dim > GRAM_CHUNK:
        part = torch.empty_like(out) if part is None else part
        for k in range(GRAM_CHUNK, dim, GRAM_CHUNK):
            torch.mm(a[:, k : k + GRAM_CHUNK], b[:, k : k + GRAM_CHUNK].T, out=part)
            out.add_(part)
    return out


def _select(scores, thresholds, hit, *, numpy: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, float32 score) of every score at or above its row's (or column's) threshold.

    ``thresholds`` broadcasts against ``scores`` ([rows, 1] or [1, cols]); ``hit`` is a bool
    buffer of the scores' shape. On the CPU numpy's comparison and ``flatnonzero`` are about
    twice as fast as torch's (``numpy=None``: numpy there, torch on a GPU).
    """
    import torch

    if numpy or (numpy is None and scores.device.type == "cpu"):
        s = scores.numpy()
        h = hit.numpy()
        np.greater_equal(s, thresholds.numpy(), out=h)
        flat = np.flatnonzero(h)
        rows, cols = np.divmod(flat, s.shape[1])
        return rows, cols, s.reshape(-1)[flat]
    torch.ge(scores, thresholds, out=hit)
    where = hit.nonzero()
    rows, cols = where[:, 0], where[:, 1]
    return rows.cpu().numpy(), cols.cpu().numpy(), scores[rows, cols].cpu().numpy()


def _round_down(values: np.ndarray) -> np.ndarray:
    """float32 values at most ``values`` (float64): a lower bound stays a lower bound."""
    rounded = values.astype(np.float32)
    up = rounded.astype(np.float64) > values
    rounded[up] = np.nextafter(rounded[up], np.float32(-np.inf))
    return rounded


def _thresholds(g, depths: np.ndarray, eps: float, scale: float, sample: int, block: int,
                dev, pool: _Pool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the float32 candidate threshold, and the expected number of candidates.

    Blocks of ``block`` queries against the sample run on ``pool`` (in this thread without one).
    """
    import torch

    n = len(depths)
    size = min(n, max(1, int(sample)))
    full = size >= n
    picked = np.arange(n) if full else np.sort(np.random.default_rng(0).permutation(n)[:size])
    d = depths.astype(np.float64)
    if full:
        k0 = depths.astype(np.int64)
        expected = d
    else:
        mu = d * size / (n - 1)
        k0 = np.ceil(mu + _SIGMAS * np.sqrt(mu) + 2).astype(np.int64)
        expected = k0 * (n - 1) / size
    k0 = np.where(depths > 0, k0, 0)
    everything = k0 > size - 1  # the sample cannot bound the depth: every item is a candidate
    thresholds = np.full(n, np.inf, dtype=np.float32)
    thresholds[(depths > 0) & everything] = -np.inf
    expected = np.where(everything, n - 1.0, np.where(depths > 0, expected, 0.0))
    todo = np.flatnonzero((depths > 0) & ~everything)
    if len(todo) == 0:
        return thresholds, expected
    sampled = g[torch.from_numpy(picked).to(dev)].to(torch.float32) * scale
    position = np.full(n, -1, dtype=np.int64)
    position[picked] = np.arange(size)

    def one_block(rows: np.ndarray) -> None:
        scores = gram(g[torch.from_numpy(rows).to(dev)].to(torch.float32) * scale, sampled)
        own = position[rows]
        mine = np.flatnonzero(own >= 0)
        if len(mine):  # the query itself, when sampled, is not a neighbour
            scores[torch.from_numpy(mine).to(dev), torch.from_numpy(own[mine]).to(dev)] = -float("inf")
        thresholds[rows] = _round_down(_kth_largest(scores, k0[rows]) - 2 * eps)

    pool = pool or _Pool(torch, 1)
    for future in [pool.submit(one_block, todo[s : s + block]) for s in range(0, len(todo), block)]:
        future.result()
    return thresholds, expected


def _kth_largest(scores, k: np.ndarray, *, topk: bool | None = None) -> np.ndarray:
    """Per row of a [q, s] tensor, its ``k[i]``-th largest value (float64).

    ``torch.topk`` on a GPU (``topk=None``), numpy's introselect on the CPU, where it is
    several times faster.
    """
    import torch

    if topk or (topk is None and scores.device.type != "cpu"):
        top = torch.topk(scores, int(k.max()), dim=1, sorted=True).values
        picked = top.gather(1, torch.from_numpy(k - 1).to(scores.device)[:, None])[:, 0]
        return picked.double().cpu().numpy()
    negated = -scores.numpy()
    out = np.empty(len(k))
    for value in np.unique(k):  # introselect, one pass per distinct k
        rows = np.flatnonzero(k == value)
        part = np.partition(negated[rows], value - 1, axis=1)
        out[rows] = -part[:, value - 1].astype(np.float64)
    return out


def _finalise(queries: np.ndarray, local: np.ndarray, pieces, grid: np.ndarray, labels: np.ndarray,
              depths: np.ndarray, thresholds: np.ndarray, width: int, eps: float,
              unit: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact relevance [len(queries), width] of queries from their candidates, and the unsafe ones.

    ``local`` is each query's row number in ``pieces``, ``thresholds`` the float32 threshold
    its candidates were selected with. Rows whose threshold may have cut into their top
    ``d`` (positions returned second) are left False, to be redone.
    """
    out = np.zeros((len(queries), width), dtype=bool)
    d = depths[queries]
    row, col, val, counts = _sorted_candidates(pieces, local)
    first = np.cumsum(counts) - counts
    # T: the d-th best float32 score; safe rows hold every item scoring at least T - 2 eps.
    enough = counts >= d
    kth = np.full(len(queries), -np.inf)
    kth[enough] = val[first[enough] + d[enough] - 1]
    floor = kth - 2 * eps
    safe = enough & (floor >= thresholds.astype(np.float64))
    # Kept: scores >= floor rounded down to float32, a prefix of each sorted row that holds
    # every candidate >= floor (a few more at most, which is harmless: a superset of the top d).
    floor32 = np.where(safe, _round_down(np.where(safe, floor, 0.0)), np.float32(np.inf))
    kept = np.flatnonzero(val >= floor32[row])
    row, col, val = row[kept], col[kept], val[kept]
    rank = kept - first[row]
    if len(row):
        rel = labels[col] == labels[queries][row]
        # Chains: runs of a query's sorted candidates whose neighbours differ by at most 2 eps.
        # float32 differences err by 2^-24 relative at most: the margin only ever merges chains.
        gap = np.float32(2 * eps * (1 + 2.0**-20))
        new_chain = np.ones(len(row), dtype=bool)
        new_chain[1:] = (row[1:] != row[:-1]) | (val[:-1] - val[1:] > gap)
        begins = np.flatnonzero(new_chain)
        size = np.diff(np.append(begins, len(row)))
        hits = np.add.reduceat(rel, begins, dtype=np.int64)
        starts_inside = rank[begins] < d[row[begins]]  # a chain starting at or past the depth never counts
        mixed = np.repeat((hits > 0) & (hits < size) & starts_inside, size)
        if mixed.any():
            pos = np.flatnonzero(mixed)
            chain = np.searchsorted(begins, pos, side="right")
            scores = _exact_scores(grid, queries, row[pos], col[pos]) * unit
            rel[pos] = rel[pos][np.lexsort((col[pos], -scores, chain))]
        inside = rank < d[row]
        out[row[inside], rank[inside]] = rel[inside]
    return out, np.flatnonzero(~safe)


def _sorted_candidates(pieces, local_queries: np.ndarray) -> tuple[np.ndarray, ...]:
    """Candidates grouped by query, each query's by float32 score descending.

    Returns ``(query slot, item, float32 score, counts per query)``; equal scores come
    in any order (they share a chain, see the module docstring).
    """
    nq = len(local_queries)
    if not pieces or not sum(len(p[0]) for p in pieces):
        empty = np.zeros(0, np.int64)
        return empty, empty.astype(np.int32), np.zeros(0, np.float32), np.zeros(nq, np.int64)
    row = np.concatenate([p[0] for p in pieces]).astype(np.int64)
    if nq != int(local_queries.max()) + 1:  # candidates exist only for query rows
        slot = np.full(int(local_queries.max()) + 1, -1, dtype=np.int64)
        slot[local_queries] = np.arange(nq)
        row = slot[row]
    # pieces are (rows, columns, scores, column offset)
    col = np.concatenate([p[1].astype(np.int64) + p[3] for p in pieces])
    val = np.concatenate([p[2] for p in pieces]).astype(np.float32, copy=False)
    bits = val.view(np.int32)
    ascending = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # IEEE order as signed integers
    descending = (np.int64(0x7FFFFFFF) - ascending).astype(np.int64)  # 0 .. 2^32 - 1, best first
    counts = np.bincount(row, minlength=nq)
    col_bits = max(1, int(col.max()).bit_length())
    if (nq - 1).bit_length() + 32 + col_bits <= 63:
        # (row, score, item) packed in one int64: a plain sort, no permutation to apply
        packed = np.sort((row << (32 + col_bits)) | (descending << col_bits) | col)
        row = packed >> (32 + col_bits)
        col = packed & ((1 << col_bits) - 1)
        ascending = (np.int64(0x7FFFFFFF) - ((packed >> col_bits) & 0xFFFFFFFF)).astype(np.int32)
        val = (ascending ^ ((ascending >> 31) & 0x7FFFFFFF)).view(np.float32)
        return row, col, val, counts
    order = np.argsort((row << 32) | descending)  # row, then score descending
    return row[order], col[order], val[order], counts


def _exact_scores(grid: np.ndarray, queries: np.ndarray, slot: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Integer dot products grid[queries[slot_i]] . grid[items_i], exact in float64.

    Products of grid integers are below 2^52 and so are all partial sums (norms are about
    2^26): float64 holds every one exactly, in any order. ``slot`` is sorted: each query's
    items are one matrix-vector product.
    """
    out = np.empty(len(items), dtype=np.float64)
    if not len(items):
        return out
    bounds = np.flatnonzero(np.diff(slot)) + 1
    for start, stop in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(slot)]]), strict=True):
        query = grid[queries[slot[start]]].astype(np.float64)
        out[start:stop] = grid[items[start:stop]].astype(np.float64) @ query
    return out


@contextmanager
def _exact_float32_matmul(torch):
    """Run float32 matmuls in full float32 (no TF32 or bf16 passes): the error bound needs it."""
    before = torch.get_float32_matmul_precision()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cuda.matmul.allow_tf32 = tf32
