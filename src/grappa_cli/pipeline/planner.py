"""One dependency graph of the project's artifacts, shared by ``run``, ``status`` and the stages.

Every artifact the configuration asks for (features, clusterings, adaptor sets, fused
models, results, the report) is a :class:`Node` with the artifacts it is made from. Its
state follows one rule, applied in pipeline order:

* ``missing``: no record; ``partial``: a record that is not complete (interrupted work);
* ``stale``: complete, but made from other inputs or settings than those configured now:
  a recorded input fingerprint differs from that input's current one, an input is itself
  not complete and current (staleness is *transitive*: redoing the features makes every
  clustering, adaptor set, fused model and result made from the old ones stale), or the
  parameters a stage would record today differ from the recorded ones;
* ``complete``: none of the above.

``grappa status`` prints these nodes and ``grappa run`` redoes exactly the configured
nodes that are not complete, so the two cannot disagree; a stage consuming an input calls
:func:`grappa_cli.pipeline.freshness.require_current` and refuses a stale or partial
one, naming the command to run first.

The roots are the image lists: a features group is stale when its images' fingerprint
(paths, sizes, mtimes) or the configured backbone's name differs from what it recorded.
Whether the *weights* behind an unchanged backbone name changed is seen when a stage
builds the backbone (``extract``, ``adapt``, ``fuse``, ``eval`` compare its ``model_id``),
not here: the planner reads records and stats files, it never loads a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grappa_cli.pipeline.freshness import require_current
from grappa_cli.pipeline.graph import Node, Plan, PlanBuilder
from grappa_cli.pipeline.stage_table import specs
from grappa_cli.project import Project

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig

__all__ = ["Node", "Plan", "PlanBuilder", "build", "require_current"]


def build(project: Project, config: GrappaConfig | None = None, *, full: bool = False,
          device: str | None = None) -> Plan:
    """The plan of ``project`` for its current ``grappa.toml`` (reads records and stats images).

    ``full``: plan a rebuild from scratch of a grown training set (``grappa run --full``).
    ``device``: the device the run uses (``--device``), for what ``auto`` settings resolve to.
    Each stage of the table (:func:`grappa_cli.pipeline.stage_table.specs`) adds its artifacts, in run order.
    """
    config = config or project.config()
    b = PlanBuilder(project, config, full=full or config.data.update == "full", device=device)
    for spec in specs():
        spec.plan(b)
    return Plan(list(b.nodes.values()), b.sets, b.fusion)
