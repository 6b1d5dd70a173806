"""Built-in clustering backends, registered through the same hook third-party plugins use.

The backend classes live in :mod:`grappa_cli.clustering` and import faiss / scikit-learn
at module level; the thin wrappers here import them only when ``fit`` runs, so listing
plugins (``grappa plugins``, ``grappa --help``) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from grappa_cli.hookspecs import hookimpl


class LazyClusterer:
    """A registered backend whose implementation module is imported on first use."""

    def __init__(self, name: str, description: str, target: str) -> None:
        self.name = name
        self.description = description
        self._target = target
        self._impl: Any = None

    @property
    def impl(self) -> Any:
        if self._impl is None:
            module, _, cls = self._target.partition(":")
            self._impl = getattr(import_module(module), cls)()
        return self._impl

    @property
    def settings(self) -> dict[str, Any]:
        return self.impl.settings

    def fit(self, x: Any, k: int, *, seed: int, niter: int, reporter: Any = None) -> Any:
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
def register_clusterers(register: Any) -> None:
    for name, description, target in BUILTIN_CLUSTERERS:
        register(LazyClusterer(name, description, target))
