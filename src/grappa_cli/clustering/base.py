"""What a clustering backend is (:class:`Clusterer`) and what it returns (:class:`ClusterResult`).

Backends are plugins (hook ``register_clusterers``). Each receives float32 points, already
prepared by the caller (the ``cluster`` stage L2-normalises them), and runs plain Euclidean
k-means on them; the stage stores the result as one pseudo-label set ``P_i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from grappa_cli.console import NullReporter, Reporter


@dataclass
class ClusterResult:
    """One k-means partition.

    ``labels[i]`` is the index of the centroid nearest to point ``i`` (the paper's
    ``P_i(x) = argmin_c ||z - c||``), ``inertia`` the sum over points of the squared distance
    to that centroid, ``iterations`` the number of Lloyd iterations run, and ``info`` what
    the backend wants recorded in the provenance (device, subsampling actually applied, ...).
    """

    centroids: np.ndarray  # float32 [k, D]
    labels: np.ndarray  # int [n]
    inertia: float
    iterations: int
    info: dict[str, object] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> np.ndarray:
        """Points per cluster, int64 [k] (zeros for empty clusters)."""
        return np.bincount(self.labels, minlength=self.k).astype(np.int64)


@runtime_checkable
class Clusterer(Protocol):
    """A k-means backend.

    ``settings`` (optional attribute) is a JSON-serialisable dict of the choices that shape
    the result besides k, seed and niter (initialisation, subsampling policy, batch size);
    the stage puts it in the artifact's parameters, so changing it makes old results stale.
    """

    name: str
    description: str

    def fit(
        self, x: np.ndarray, k: int, *, seed: int, niter: int, reporter: Reporter | None = None,
    ) -> ClusterResult:
        """Partition the rows of ``x`` (float32 [n, D], 2 <= k < n) into ``k`` clusters."""
        ...


def settings_of(clusterer: object) -> dict[str, object]:
    """The backend's result-shaping settings (empty when it declares none)."""
    return dict(getattr(clusterer, "settings", None) or {})


def reporter_or_null(reporter: Reporter | None) -> Reporter:
    return reporter if reporter is not None else NullReporter()


def check_fit_args(x: np.ndarray, k: int, niter: int) -> np.ndarray:
    """Validate a backend's inputs; returns ``x`` as C-contiguous float32.

    Raises ``ValueError`` (a programming error: the stage validates user input first).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D array [n, D], got shape {x.shape}")
    n = x.shape[0]
    if not 2 <= k < n:
        raise ValueError(f"k must satisfy 2 <= k < n (k={k}, n={n})")
    if niter < 1:
        raise ValueError(f"niter must be >= 1, got {niter}")
    return x
