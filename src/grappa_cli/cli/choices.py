"""Option values limited to a list: help shows the choices and a typo is refused with them."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any

# `grappa run --until`: the pipeline's own stage list (a module without imports: `--help` stays light)
from grappa_cli.pipeline.stage import Stage

__all__ = ["IndexType", "OracleMetric", "Split", "Stage", "value"]


class Split(StrEnum):
    """``grappa extract --split``."""

    train = "train"
    test = "test"
    all = "all"


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
