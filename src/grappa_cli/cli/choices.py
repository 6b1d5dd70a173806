"""Option values limited to a list: help shows the choices and a typo is refused with them."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any


class Split(StrEnum):
    """``grappa extract --split``."""

    train = "train"
    test = "test"
    all = "all"


class Stage(StrEnum):
    """``grappa run --until``: the pipeline's own stage list (a test keeps the two equal)."""

    extract = "extract"
    cluster = "cluster"
    adapt = "adapt"
    fuse = "fuse"
    eval = "eval"
    report = "report"


class IndexType(StrEnum):
    """``grappa index --index``."""

    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


class OracleMetric(StrEnum):
    """``grappa report --oracle-metric``."""

    r_precision = "r_precision"
    map_at_r = "map@r"


def value(choice: Any) -> Any:
    """The plain string of a choice (None and strings pass through)."""
    return choice.value if isinstance(choice, Enum) else choice
