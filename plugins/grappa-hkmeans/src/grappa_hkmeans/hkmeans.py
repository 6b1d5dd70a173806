"""Hierarchical (two-level) k-means: k clusters for the price of about 2 sqrt(k)-means.

Flat k-means costs O(n k D) per iteration, which for the paper's finest sets (k = 65536
or 131072 on 133k images) means hours on a CPU. Here:

1. **coarse**: k-means with k1 = round(sqrt(k)) clusters on all points (greedy k-means++
   seeds from grappa, then faiss Lloyd iterations);
2. **allocate**: coarse cluster j of n_j points gets k_j fine clusters, proportional to
   n_j (largest-remainder rounding), at least 1 and at most n_j, summing to exactly k;
3. **fine**: each coarse cluster is split by its own k-means into k_j clusters (a cluster
   with k_j = n_j keeps its points as centroids, k_j = 1 takes the mean);
4. **refine** (``refine_iters``, default 2): global Lloyd iterations with an exact faiss
   index over all k centroids, which lets points cross coarse boundaries;
5. **assign**: every point gets the index of its nearest centroid among all k (exact), so
   labels mean the same thing as with flat k-means.

Each level costs about O(n sqrt(k) D) per iteration; the refinement and the final
assignment cost O(n k D) each, once per iteration rather than ``niter`` times.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

# grappa's clustering helpers import faiss: they are imported where used, so that merely
# registering this plugin (``grappa plugins``, ``grappa --help``) stays light.


def coarse_count(k: int) -> int:
    """Number of first-level clusters: round(sqrt(k)), at least 1."""
    return max(1, round(math.sqrt(k)))


def allocate(sizes: np.ndarray, k: int) -> np.ndarray:
    """Fine clusters per coarse cluster: proportional to ``sizes``, 1 <= k_j <= n_j, sum exactly ``k``.

    Empty coarse clusters get none. Rounding follows the largest-remainder rule; when the
    minimum of one per non-empty cluster (or the cap at n_j) pushes the total off ``k``, the
    clusters furthest above (below) their exact share give (take) the difference.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(sizes.sum())
    nonempty = sizes > 0
    if not int(nonempty.sum()) <= k <= n:
        raise ValueError(f"cannot split {n} points in {int(nonempty.sum())} groups into k={k} clusters")
    share = k * sizes / n
    counts = np.clip(np.floor(share).astype(np.int64), nonempty.astype(np.int64), sizes)
    while (diff := k - int(counts.sum())) != 0:
        remainder = share - counts
        if diff > 0:
            eligible = np.flatnonzero(counts < sizes)
            order = eligible[np.argsort(-remainder[eligible], kind="stable")]
            counts[order[:diff]] += 1
        else:
            eligible = np.flatnonzero(counts > 1)
            order = eligible[np.argsort(remainder[eligible], kind="stable")]
            counts[order[:-diff]] -= 1
    return counts


def faiss_kmeans(x: np.ndarray, k: int, *, seed: int, niter: int) -> np.ndarray:
    """Centroids of k-means on ``x``: greedy k-means++ seeds (grappa's), then faiss Lloyd on all points."""
    import faiss

    from grappa_cli.clustering.seeding import greedy_trials, kmeanspp

    x = np.ascontiguousarray(x, dtype=np.float32)
    cp = faiss.ClusteringParameters()
    cp.niter = niter
    cp.seed = int(seed)
    cp.max_points_per_centroid = max(256, math.ceil(x.shape[0] / k))
    cp.min_points_per_centroid = 1
    clus = faiss.Clustering(x.shape[1], k, cp)
    seeds = kmeanspp(x, k, seed=seed, trials=greedy_trials(k))
    faiss.copy_array_to_vector(seeds.ravel(), clus.centroids)
    clus.train(x, faiss.IndexFlatL2(x.shape[1]))
    return faiss.vector_to_array(clus.centroids).reshape(k, x.shape[1])


def split_cell(points: np.ndarray, k: int, *, seed: int, niter: int) -> np.ndarray:
    """``k`` centroids for the points of one coarse cluster (1 <= k <= len(points))."""
    if k == 1:
        return points.mean(axis=0, dtype=np.float64).astype(np.float32)[None]
    if k == points.shape[0]:
        return np.array(points, dtype=np.float32, copy=True)
    return faiss_kmeans(points, k, seed=seed, niter=niter)


class HierarchicalKMeans:
    """Two-level k-means (coarse sqrt(k), proportional fine split, global refinement)."""

    name = "hkmeans"
    description = ("hierarchical k-means: sqrt(k) coarse clusters, each split in proportion to its size, "
                   "then global Lloyd refinement (fast for k >= 65k on a CPU)")

    def __init__(self, *, refine_iters: int = 2) -> None:
        self.refine_iters = refine_iters

    @property
    def settings(self) -> dict[str, Any]:
        return {"init": "greedy-k-means++", "coarse": "round(sqrt(k))",
                "allocation": "proportional to coarse size, largest remainder",
                "refine_iters": self.refine_iters, "subsample": "none"}

    def fit(
        self, x: np.ndarray, k: int, *, seed: int, niter: int, reporter: Any = None,
    ) -> Any:
        """A :class:`grappa_cli.clustering.base.ClusterResult` with exactly ``k`` centroids."""
        from grappa_cli.clustering.assign import flat_index, inertia, mean_centroids, nearest
        from grappa_cli.clustering.base import ClusterResult, check_fit_args, reporter_or_null

        x = check_fit_args(x, k, niter)
        n = x.shape[0]
        start = time.perf_counter()
        k1 = coarse_count(k)
        with reporter_or_null(reporter).task(f"hierarchical k-means k={k}",
                                             total=k1 + self.refine_iters + 2, unit="step") as task:
            if k1 > 1:
                coarse = faiss_kmeans(x, k1, seed=seed, niter=niter)
                coarse_labels = nearest(x, coarse)
            else:
                coarse_labels = np.zeros(n, dtype=np.int64)
            task.advance()
            sizes = np.bincount(coarse_labels, minlength=k1)
            counts = allocate(sizes, k)
            order = np.argsort(coarse_labels, kind="stable")
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            parts = []
            for j in range(k1):
                if counts[j]:
                    members = x[order[bounds[j]:bounds[j + 1]]]
                    parts.append(split_cell(members, int(counts[j]), seed=seed + 1 + j, niter=niter))
                task.advance()
            centroids = np.concatenate(parts).astype(np.float32)
            index = flat_index(x.shape[1])
            for _ in range(self.refine_iters):
                labels = nearest(x, centroids, index=index)
                centroids = mean_centroids(x, labels, k, centroids)
                task.advance()
            labels = nearest(x, centroids, index=index)
            task.advance()
        info = {"coarse_k": k1, "coarse_sizes_min_max": [int(sizes.min()), int(sizes.max())],
                "fine_per_coarse_min_max": [int(counts[sizes > 0].min()), int(counts.max())],
                "local_niter": niter, "refine_iters": self.refine_iters,
                "points_per_centroid": n / k, "subsampled": False,
                "fit_seconds": time.perf_counter() - start}
        return ClusterResult(centroids, labels, inertia(x, centroids, labels), self.refine_iters, info)
