"""Precision@k: the share of relevant images among a query's first k neighbours."""

from __future__ import annotations

from typing import Any


class PrecisionAtK:
    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.name = f"precision@{self.k}"
        self.description = f"share of the first {self.k} neighbours that have the query's class"

    def depth(self, max_r: int) -> int:
        """How many neighbours per query this metric reads."""
        return self.k

    def compute(self, neighbors: Any) -> Any:
        """One value per query, from grappa's leave-one-out neighbour lists (self excluded)."""
        return neighbors.relevant[:, : self.k].mean(axis=1)
