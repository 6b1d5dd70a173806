"""k-means++ seeding (Arthur & Vassilvitskii, 2007) on all points, plain or greedy.

Plain k-means++ draws each next centre with probability proportional to D(x)², the squared
distance from x to the nearest centre chosen so far. The *greedy* variant (section 6 of
the k-means++ paper; scikit-learn's default) draws ``trials = 2 + floor(ln k)`` candidates
that way and keeps the one that lowers the total potential sum D(x)² the most.

Why grappa seeds itself instead of using faiss's built-in k-means++: on clustered
ViT-like data (``benchmarks/bench_kmeans.py``) Lloyd iterations from plain k-means++ end
about 3% above scikit-learn's inertia, and from greedy seeding they end at the same
inertia. Each step reads all n points once either way (a skinny ``x @ candidates.T``
product is memory-bound), so greedy seeding costs about 1.3x plain seeding, and here about
what faiss's own k-means++ costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def greedy_trials(k: int) -> int:
    """Candidates per step of greedy k-means++: 2 + floor(ln k) (scikit-learn's choice)."""
    return 2 + int(math.log(k))


def kmeanspp(
    x: np.ndarray, k: int, *, seed: int, trials: int = 1,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``k`` centres chosen among the rows of ``x`` (float32 [k, D]).

    ``trials = 1`` is plain k-means++, more is the greedy variant. ``progress(m)`` is
    called with the number of centres added since its previous call (about 100 calls).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    first = int(rng.integers(n))
    centres[0] = x[first]
    best = np.maximum(sq - 2.0 * (x @ x[first]) + sq[first], 0.0)
    step = max(1, k // 100)
    reported = 1
    for j in range(1, k):
        cumulative = np.cumsum(best, dtype=np.float64)
        total = cumulative[-1]
        if total > 0:
            draws = rng.random(trials) * total
            candidates = np.minimum(np.searchsorted(cumulative, draws, side="right"), n - 1)
        else:  # every point coincides with a centre already: any point will do
            candidates = rng.integers(0, n, trials)
        dist = sq[:, None] - 2.0 * (x @ x[candidates].T) + sq[candidates][None, :]
        np.maximum(dist, 0.0, out=dist)
        np.minimum(dist, best[:, None], out=dist)
        choice = int(np.argmin(dist.sum(axis=0, dtype=np.float64))) if trials > 1 else 0
        best = np.ascontiguousarray(dist[:, choice])
        centres[j] = x[candidates[choice]]
        if progress is not None and (j + 1 - reported >= step or j == k - 1):
            progress(j + 1 - reported)
            reported = j + 1
    return centres
