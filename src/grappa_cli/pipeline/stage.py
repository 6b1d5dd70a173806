"""The pipeline's stages, in run order: :class:`Stage` (the table of what each does is
:mod:`grappa_cli.pipeline.stage_table`).

The values are the names that plans, ``--json`` output, ``--until`` and ``grappa status`` use.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A stage of ``grappa run``; the members are in run order (and planning order)."""

    extract = "extract"
    cluster = "cluster"
    adapt = "adapt"
    fuse = "fuse"
    eval = "eval"
    report = "report"
