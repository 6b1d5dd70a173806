"""Built-in retrieval metrics (MAP@R, R-Precision, Recall@k), registered like any plugin.

Definitions follow Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020), as
computed by pytorch-metric-learning's ``AccuracyCalculator``; see :mod:`grappa_cli.retrieval.metrics`
for the ranking rule and the :class:`~grappa_cli.retrieval.metrics.Neighbors` structure they read.
numpy is imported inside the methods: this module is loaded at CLI start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grappa_cli.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    import numpy as np

    from grappa_cli.retrieval.metrics import Neighbors


def _within_r(neighbors: Neighbors) -> tuple[np.ndarray, np.ndarray]:
    """(relevant and rank <= R) as bool [q, max R], and the ranks 1..max R.

    The width is the global max R, not the chunk's, so that every row is reduced over the
    same length and results do not depend on how queries were chunked.
    """
    import numpy as np

    width = int(neighbors.max_r)
    ranks = np.arange(1, width + 1)
    hits = neighbors.relevant[:, :width] & (ranks[None, :] <= neighbors.r[:, None])
    return hits, ranks


class MapAtR:
    """MAP@R: mean over queries of (1/R) * sum_{i <= R, item i relevant} precision@i."""

    name = "map@r"
    description = "mean average precision at R (Musgrave et al. 2020); the paper's mAP"

    relevance_only = True

    def depth(self, max_r: int) -> int:
        return max_r

    def query_depth(self, r: np.ndarray) -> np.ndarray:
        return r

    def compute(self, neighbors: Neighbors) -> np.ndarray:
        import numpy as np

        hits, ranks = _within_r(neighbors)
        precision = np.cumsum(hits, axis=1) / ranks[None, :]
        return np.where(hits, precision, 0.0).sum(axis=1) / neighbors.r


class RPrecision:
    """R-Precision: mean over queries of (relevant items among the first R) / R."""

    name = "r_precision"
    description = "R-Precision (Musgrave et al. 2020); the paper's RP"

    relevance_only = True

    def depth(self, max_r: int) -> int:
        return max_r

    def query_depth(self, r: np.ndarray) -> np.ndarray:
        return r

    def compute(self, neighbors: Neighbors) -> np.ndarray:
        hits, _ = _within_r(neighbors)
        return hits.sum(axis=1) / neighbors.r


class RecallAtK:
    """Recall@k: 1 when a relevant item is among the first k neighbours, else 0."""

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.name = f"recall@{self.k}"
        self.description = f"share of queries with a relevant image among the first {self.k} neighbours"

    relevance_only = True

    def depth(self, max_r: int) -> int:
        return self.k

    def query_depth(self, r: np.ndarray) -> int:
        return self.k

    def compute(self, neighbors: Neighbors) -> np.ndarray:
        return neighbors.relevant[:, : self.k].any(axis=1).astype(float)


class RecallFamily:
    """``recall@k`` for any k >= 1 (``recall@1`` equals precision@1)."""

    name = "recall@k"
    description = "Recall@k of deep metric learning: a relevant image among the first k"

    def at(self, k: int) -> RecallAtK:
        return RecallAtK(k)


@hookimpl
def register_metrics(register: Register) -> None:
    register(MapAtR())
    register(RPrecision())
    register(RecallFamily())
