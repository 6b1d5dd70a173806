"""k-means with faiss (the default backend): k-means++ seeding, Lloyd iterations on all points.

Seeding is greedy k-means++ over all points (:mod:`grappa_cli.clustering.seeding`, which
explains why it is not faiss's built-in plain k-means++); ``init="k-means++"`` selects
plain k-means++ (faiss's own). The centres go to faiss as initial centroids.

faiss's defaults are tuned for building IVF indexes, not for pseudo-labels, so two of them
are overridden on purpose:

* ``max_points_per_centroid`` (default 256): faiss trains on a random subsample of
  ``256 * k`` points when n is larger. Every image needs a pseudo-label computed from
  centroids that saw all images, so it is raised to ``ceil(n / k)`` whenever that is larger:
  nothing is ever subsampled.
* ``min_points_per_centroid`` (default 39): faiss only warns (on the C++ stderr) below
  ``39 * k`` points. The paper's finest set has about one image per cluster, so the
  warning is meaningless here; it is set to 1 and the actual points per centroid are
  recorded in the result's ``info`` instead.

The iterations run one faiss ``train`` call each, continuing from the previous centroids,
which is faiss's own loop (same centroids, same objectives; checked in the tests) while
letting grappa show progress per iteration. Iterations stop early once the objective
stops decreasing and no empty cluster had to be repaired (converged), as faiss's own loop
does. Empty clusters are repaired by faiss (it splits a large cluster in two), so k close
to n neither stalls nor crawls.
"""

from __future__ import annotations

import math
import time

import faiss
import numpy as np

from grappa_cli.clustering.assign import flat_index, gpu_count, inertia, nearest
from grappa_cli.clustering.base import ClusterResult, check_fit_args, reporter_or_null
from grappa_cli.clustering.seeding import greedy_trials, kmeanspp
from grappa_cli.console import Reporter

FAISS_DEFAULT_MAX_POINTS_PER_CENTROID = 256
MIN_POINTS_PER_CENTROID = 1
INITS = ("greedy-k-means++", "k-means++")


def max_points_per_centroid(n: int, k: int) -> int:
    """The smallest faiss setting >= its default for which ``n`` points are never subsampled."""
    return max(FAISS_DEFAULT_MAX_POINTS_PER_CENTROID, math.ceil(n / k))


def faiss_kmeanspp_available() -> bool:
    """Whether this faiss build seeds with k-means++ itself (``ClusteringParameters.init_method``)."""
    return hasattr(faiss.ClusteringParameters(), "init_method") and hasattr(
        faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS")


class FaissKMeans:
    """faiss k-means: greedy k-means++ seeding, Lloyd on all points, GPU when faiss sees one."""

    name = "faiss"
    description = "faiss k-means, greedy k-means++ seeding, all points (no subsampling), GPU when available"

    def __init__(self, *, init: str = "greedy-k-means++", use_gpu: bool | None = None) -> None:
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init
        self.use_gpu = use_gpu

    @property
    def settings(self) -> dict[str, object]:
        return {
            "init": self.init,
            "subsample": "none (max_points_per_centroid = max(256, ceil(n/k)))",
            "min_points_per_centroid": MIN_POINTS_PER_CENTROID,
            "stop": "objective no longer decreases and no cluster was split",
        }

    def _parameters(self, n: int, k: int, seed: int) -> faiss.ClusteringParameters:
        cp = faiss.ClusteringParameters()
        cp.niter = 1
        cp.seed = int(seed)
        cp.max_points_per_centroid = max_points_per_centroid(n, k)
        cp.min_points_per_centroid = MIN_POINTS_PER_CENTROID
        cp.verbose = False
        if faiss_kmeanspp_available():  # only used when no initial centroids are given
            cp.init_method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
        return cp

    def _seed(self, x: np.ndarray, k: int, seed: int, reporter: Reporter) -> tuple[np.ndarray | None, str]:
        """Initial centroids, or None to let faiss seed with its own k-means++."""
        if self.init == "k-means++" and faiss_kmeanspp_available():
            return None, "k-means++ (faiss)"
        trials = greedy_trials(k) if self.init == "greedy-k-means++" else 1
        with reporter.task(f"{self.init} seeding k={k}", total=k, unit="centres") as task:
            task.advance(1)
            centres = kmeanspp(x, k, seed=seed, trials=trials, progress=task.advance)
        return centres, f"{self.init} (grappa, {trials} candidate(s) per centre)"

    def fit(
        self, x: np.ndarray, k: int, *, seed: int, niter: int, reporter: Reporter | None = None,
    ) -> ClusterResult:
        x = check_fit_args(x, k, niter)
        n, d = x.shape
        use_gpu = gpu_count() > 0 if self.use_gpu is None else self.use_gpu
        reporter = reporter_or_null(reporter)
        start = time.perf_counter()
        centroids, init_used = self._seed(x, k, seed, reporter)
        seed_seconds = time.perf_counter() - start
        objectives: list[float] = []
        splits = 0
        index = flat_index(d, use_gpu=use_gpu)
        with reporter.task(f"k-means k={k}", total=niter, unit="iter") as task:
            for _ in range(niter):
                clus = faiss.Clustering(d, k, self._parameters(n, k, seed))
                if centroids is not None:
                    faiss.copy_array_to_vector(centroids.ravel(), clus.centroids)
                clus.train(x, index)  # faiss empties and refills the index every iteration
                centroids = faiss.vector_to_array(clus.centroids).reshape(k, d)
                # faiss's stubs say list; it is a SWIG vector, which has .at() and no []
                stats = clus.iteration_stats.at(0)  # type: ignore[attr-defined]
                splits += int(stats.nsplit)
                converged = bool(objectives) and stats.obj >= objectives[-1] and stats.nsplit == 0
                objectives.append(float(stats.obj))
                task.advance()
                task.update(objective=float(stats.obj))
                if converged:
                    break
        assert centroids is not None
        labels = nearest(x, centroids, index=index)
        info = {
            "device": "gpu" if use_gpu else "cpu",
            "faiss_version": faiss.__version__,
            "init": init_used,
            "seed_seconds": seed_seconds,
            "max_points_per_centroid": max_points_per_centroid(n, k),
            "min_points_per_centroid": MIN_POINTS_PER_CENTROID,
            "points_per_centroid": n / k,
            "subsampled": False,
            "split_clusters": splits,
            "objectives": objectives,
            "fit_seconds": time.perf_counter() - start,
        }
        return ClusterResult(centroids.astype(np.float32), labels, inertia(x, centroids, labels),
                             len(objectives), info)
