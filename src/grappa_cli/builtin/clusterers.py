"""Built-in clustering backends, registered through the same hook third-party plugins use.

The backend classes live in :mod:`grappa_cli.clustering` and import faiss / scikit-learn
at module level; the thin wrappers here import them only when ``fit`` runs, so listing
plugins (``grappa plugins``, ``grappa --help``) stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

from grappa_cli.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    import numpy as np

    from grappa_cli.clustering.base import Clusterer, ClusterResult
    from grappa_cli.console import Reporter

    class _Backend(Clusterer, Protocol):
        """The built-in backends: a :class:`Clusterer` that declares its ``settings``."""

        @property
        def settings(self) -> Mapping[str, object]: ...


class LazyClusterer:
    """A registered backend whose implementation module is imported on first use."""

    def __init__(self, name: str, description: str, target: str) -> None:
        self.name = name
        self.description = description
        self._target = target
        self._impl: _Backend | None = None

    @property
    def impl(self) -> _Backend:
        if self._impl is None:
            module, _, cls = self._target.partition(":")
            self._impl = getattr(import_module(module), cls)()
        return self._impl

    @property
    def settings(self) -> Mapping[str, object]:
        return self.impl.settings

    def fit(self, x: np.ndarray, k: int, *, seed: int, niter: int, reporter: Reporter | None = None) -> ClusterResult:
        return self.impl.fit(x, k, seed=seed, niter=niter, reporter=reporter)

    def __repr__(self) -> str:
        return f"<clusterer {self.name} ({self._target})>"


BUILTIN_CLUSTERERS = (
    ("faiss", "faiss k-means, greedy k-means++ seeding, all points (no subsampling), GPU when available",
     "grappa_cli.clustering.faiss_kmeans:FaissKMeans"),
    ("sklearn", "scikit-learn KMeans (k-means++, Lloyd, all points, CPU)",
     "grappa_cli.clustering.sklearn_kmeans:SklearnKMeans"),
    ("minibatch", "scikit-learn MiniBatchKMeans (k-means++ on a sample, mini-batch updates, CPU)",
     "grappa_cli.clustering.sklearn_kmeans:SklearnMiniBatchKMeans"),
)


@hookimpl
def register_clusterers(register: Register) -> None:
    for name, description, target in BUILTIN_CLUSTERERS:
        register(LazyClusterer(name, description, target))
