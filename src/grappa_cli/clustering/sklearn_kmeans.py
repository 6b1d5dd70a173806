"""k-means with scikit-learn: ``KMeans`` (Lloyd) and ``MiniBatchKMeans`` for large n.

Both seed with k-means++ from ``random_state=seed`` (one initialisation), so the same seed
gives the same partition. scikit-learn offers no per-iteration callback: progress shows one
step per k. Labels and inertia are recomputed by the shared exact assignment
(:mod:`grappa_cli.clustering.assign`), like every backend.
"""

from __future__ import annotations

import time

import numpy as np

from grappa_cli.clustering.assign import inertia, nearest
from grappa_cli.clustering.base import ClusterResult, check_fit_args, reporter_or_null
from grappa_cli.console import Reporter


class SklearnKMeans:
    """scikit-learn ``KMeans``: k-means++ seeding, Lloyd iterations on all points (CPU)."""

    name = "sklearn"
    description = "scikit-learn KMeans (k-means++, Lloyd, all points, CPU)"

    #: Stop when no label changes (tol = 0), like the faiss backend's "objective no longer decreases".
    tol = 0.0

    @property
    def settings(self) -> dict[str, object]:
        return {"init": "k-means++", "algorithm": "lloyd", "n_init": 1, "tol": self.tol, "subsample": "none"}

    def fit(
        self, x: np.ndarray, k: int, *, seed: int, niter: int, reporter: Reporter | None = None,
    ) -> ClusterResult:
        from sklearn import __version__ as sklearn_version
        from sklearn.cluster import KMeans

        x = check_fit_args(x, k, niter)
        start = time.perf_counter()
        model = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=niter, tol=self.tol,
                       algorithm="lloyd", random_state=seed, copy_x=True)
        with reporter_or_null(reporter).task(f"k-means k={k}", total=1, unit="fit") as task:
            model.fit(x)
            task.advance()
        centroids = model.cluster_centers_.astype(np.float32)
        labels = nearest(x, centroids, use_gpu=False)
        info = {"device": "cpu", "sklearn_version": sklearn_version, "subsampled": False,
                "points_per_centroid": x.shape[0] / k, "fit_seconds": time.perf_counter() - start}
        return ClusterResult(centroids, labels, inertia(x, centroids, labels), int(model.n_iter_), info)


class SklearnMiniBatchKMeans:
    """scikit-learn ``MiniBatchKMeans``: k-means++ on a sample, then mini-batch updates.

    ``niter`` counts passes over the data (``max_iter``). Much cheaper per pass than Lloyd
    for large n, at the cost of a somewhat higher inertia. The k-means++ sample is
    ``max(3 * batch_size, 3 * k)`` points (scikit-learn's rule), capped at n.
    """

    name = "minibatch"
    description = "scikit-learn MiniBatchKMeans (k-means++ on a sample, mini-batch updates, CPU)"

    def __init__(self, *, batch_size: int = 4096, max_no_improvement: int = 10) -> None:
        self.batch_size = batch_size
        self.max_no_improvement = max_no_improvement

    @property
    def settings(self) -> dict[str, object]:
        return {"init": "k-means++", "n_init": 1, "batch_size": self.batch_size,
                "init_size": "min(n, max(3 * batch_size, 3 * k))",
                "max_no_improvement": self.max_no_improvement, "subsample": "mini-batches"}

    def fit(
        self, x: np.ndarray, k: int, *, seed: int, niter: int, reporter: Reporter | None = None,
    ) -> ClusterResult:
        from sklearn import __version__ as sklearn_version
        from sklearn.cluster import MiniBatchKMeans

        x = check_fit_args(x, k, niter)
        n = x.shape[0]
        init_size = min(n, max(3 * self.batch_size, 3 * k))
        start = time.perf_counter()
        model = MiniBatchKMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=niter,
                                batch_size=min(self.batch_size, n), init_size=init_size,
                                max_no_improvement=self.max_no_improvement, random_state=seed,
                                compute_labels=False)
        with reporter_or_null(reporter).task(f"mini-batch k-means k={k}", total=1, unit="fit") as task:
            model.fit(x)
            task.advance()
        centroids = model.cluster_centers_.astype(np.float32)
        labels = nearest(x, centroids, use_gpu=False)
        info = {"device": "cpu", "sklearn_version": sklearn_version, "init_size": init_size,
                "batch_size": min(self.batch_size, n), "steps": int(model.n_steps_),
                "points_per_centroid": n / k, "fit_seconds": time.perf_counter() - start}
        return ClusterResult(centroids, labels, inertia(x, centroids, labels), int(model.n_iter_), info)
