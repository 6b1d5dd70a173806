"""How long the work a plan announces will take, from rates measured in this very project.

Every stage records its seconds next to its work: embedding groups (``seconds``, ``embedded``),
adaptor sets (``seconds``, ``images``, ``epochs``), fused models (``seconds``, epochs as the loss
curve, ``trained_on.images``, the sets) and results (``seconds``, ``images``). From them come
three rates on this machine and device:

* embedding: seconds per image through the frozen backbone (extraction, evaluation);
* adaptation: seconds per training image pass of one set (forward, backward, augmentation);
* fusion: seconds per image pass per candidate (the backbone plus each fused set).

A stage that has not run yet borrows from the others (an adaptation pass about two embeddings:
the frozen backbone needs activation gradients only; a fusion pass about 0.65 of an adaptation
pass per candidate, the backbone being shared by them: :data:`ADAPT_PER_EMBED`,
:data:`FUSE_PER_ADAPT`, measured on the benchmarks page's projects) and is marked *rough*.
The work itself comes from the plan: how many images each set trains on
(:func:`~grappa_cli.train.optim.schedule.fit_to_size` gives the passes), the union the fusion
trains on, the test images each result embeds. Nothing is loaded or run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grappa_cli.pipeline.rates import ADAPT_PER_EMBED, FUSE_PER_ADAPT, Estimate, Pricing, Rates, measured
from grappa_cli.pipeline.stage_table import spec

if TYPE_CHECKING:
    from collections.abc import Collection

    from grappa_cli.config import GrappaConfig
    from grappa_cli.pipeline.planner import Plan
    from grappa_cli.project import Project

__all__ = ["ADAPT_PER_EMBED", "FUSE_PER_ADAPT", "Estimate", "Pricing", "Rates", "estimate", "measured"]


def estimate(project: Project, config: GrappaConfig, plan: Plan,
             stages: Collection[str] | None = None) -> Estimate:
    """Seconds of the work ``plan`` announces (:func:`grappa_cli.pipeline.planner.build`), stage by
    stage; only that of ``stages`` when given (``grappa run --until`` stops before the others)."""
    store = project.store(mode="r") if project.store_path.exists() else None
    pricing = Pricing(config, plan, measured(project, store))
    for node in plan.todo():
        if stages is not None and node.stage not in stages:
            continue
        price = spec(node.stage).price
        if price is not None:
            price(pricing, node)
    return Estimate(pricing.seconds, [s for s in pricing.rates.rough if s in pricing.seconds], pricing.unknown)
