"""A tiny third-party grappa plugin used by the plugin tests.

It registers a real (if simple) clusterer: farthest-point seeding followed by Lloyd
iterations in NumPy, so that third-party clusterers can be shown end to end.
"""

from __future__ import annotations

import numpy as np
import pluggy

hookimpl = pluggy.HookimplMarker("grappa")
__version__ = "0.3.1"


class FarthestPointKMeans:
    name = "farthest"
    description = "farthest-point seeding + Lloyd iterations (NumPy)"

    def fit(self, x: np.ndarray, k: int, *, seed: int = 0, niter: int = 10, reporter=None):
        rng = np.random.default_rng(seed)
        centroids = [x[rng.integers(len(x))]]
        dist = ((x - centroids[0]) ** 2).sum(1)
        for _ in range(k - 1):
            centroids.append(x[int(dist.argmax())])
            dist = np.minimum(dist, ((x - centroids[-1]) ** 2).sum(1))
        c = np.stack(centroids).astype(np.float32)
        for _ in range(niter):
            labels = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
            for j in range(k):
                if (labels == j).any():
                    c[j] = x[labels == j].mean(0)
        d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        labels = d.argmin(1)
        return {"centroids": c, "labels": labels, "inertia": float(d.min(1).sum()), "iterations": niter}


@hookimpl
def register_clusterers(register):
    register(FarthestPointKMeans())
