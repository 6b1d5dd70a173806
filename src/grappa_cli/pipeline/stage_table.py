"""Each stage of the pipeline declared once: the table that ``run``, ``status``, the planner and the estimate read.

:func:`specs` holds one :class:`StageSpec` per :class:`~grappa_cli.pipeline.stage.Stage`, in run
order: the command that runs the stage alone, how the planner judges its artifacts (the
parameters and inputs it would record; :mod:`grappa_cli.pipeline.graph`), how ``grappa run``
executes it (:mod:`grappa_cli.pipeline.runners`) and how the time estimate prices its work
(:mod:`grappa_cli.pipeline.rates`). :func:`grappa_cli.pipeline.planner.build`,
:func:`grappa_cli.pipeline.run.run_pipeline`, :func:`grappa_cli.pipeline.estimate.estimate` and
``grappa status``'s next step read it instead of spelling stage names. The modules it names sit
below it, the modules that read it above it: no import cycle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from grappa_cli.pipeline import graph, rates, runners
from grappa_cli.pipeline.graph import Node, PlanBuilder
from grappa_cli.pipeline.rates import Pricing
from grappa_cli.pipeline.runners import Runner
from grappa_cli.pipeline.stage import Stage

__all__ = ["Stage", "StageSpec", "spec", "specs"]


@dataclass(frozen=True)
class StageSpec:
    """Everything the pipeline knows about one stage."""

    stage: Stage
    #: the command that runs this stage alone (``grappa status`` names it as the next step)
    command: str
    #: the planner's part: adds the stage's artifacts (nodes) with the parameters and inputs it would record
    plan: Callable[[PlanBuilder], None]
    #: ``grappa run``'s part: brings the stage's configured artifacts up to date
    run: Runner
    #: the estimate's part: adds the seconds of one planned node of the stage (None: not priced)
    price: Callable[[Pricing, Node], None] | None = None
    #: how ``grappa run --full`` runs it, where that differs from ``run``
    run_full: Runner | None = None


@functools.cache
def specs() -> tuple[StageSpec, ...]:
    """The table: one :class:`StageSpec` per :class:`Stage`, in run order."""
    table = (
        StageSpec(Stage.extract, "grappa extract", graph.plan_features, runners.run_extract, rates.price_extract,
                  functools.partial(runners.run_extract, full=True)),
        StageSpec(Stage.cluster, "grappa cluster", graph.plan_clusters, runners.run_cluster),
        StageSpec(Stage.adapt, "grappa adapt", graph.plan_adaptors, runners.run_adapt, rates.price_adapt),
        StageSpec(Stage.fuse, "grappa fuse", graph.plan_fusion, runners.run_fuse, rates.price_fuse),
        StageSpec(Stage.eval, "grappa eval", graph.plan_results, runners.run_eval, rates.price_eval),
        StageSpec(Stage.report, "grappa report", graph.plan_report, runners.run_report),
    )
    if tuple(spec.stage for spec in table) != tuple(Stage):
        raise AssertionError("the stage table must list every Stage once, in run order")
    return table


def spec(stage: Stage | str) -> StageSpec:
    """The table's entry for ``stage`` (a :class:`Stage` or its name)."""
    wanted = Stage(stage)
    return next(entry for entry in specs() if entry.stage is wanted)
