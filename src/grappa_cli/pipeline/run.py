"""``grappa run``: every stage that is not complete, in order, like ``make``.

extract -> cluster -> adapt -> fuse (configured strategies) -> eval (configured tasks, every
model) -> report. Each stage skips what is complete for the current configuration and
inputs, resumes what was interrupted, and redoes what is stale: a changed setting or input
makes exactly the artifacts that depend on it stale (their recorded input fingerprints no
longer match), so only those rerun. A second ``grappa run`` finds nothing to do.

The plan (:mod:`grappa_cli.pipeline.planner`, what ``grappa status`` prints) is built first and returned
as ``planned``: the artifacts the run is expected to (re)make; the stages apply the same rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grappa_cli.console import PipelineReporter, Reporter
from grappa_cli.pipeline.runners import Runner, StageOutcome, configured_sets
from grappa_cli.pipeline.stage import Stage
from grappa_cli.pipeline.stage_table import specs
from grappa_cli.project import Project

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.pipeline.planner import Plan
    from grappa_cli.reporting.report import ReportResult

__all__ = ["STAGES", "RunOutcome", "StageOutcome", "configured_sets", "run_pipeline"]

#: The stages in run order (:class:`~grappa_cli.pipeline.stage.Stage`; each is also its name).
STAGES: tuple[Stage, ...] = tuple(Stage)
#: each stage's runner from the stage table, as :func:`run_pipeline` calls it (a test replaces one)
_RUNNERS: dict[Stage, Runner] = {spec.stage: spec.run for spec in specs()}


@dataclass
class RunOutcome:
    stages: list[StageOutcome]
    report: ReportResult | None = None
    #: what the plan (``grappa status``) announced before the run: artifact ids to (re)make
    planned: list[str] = field(default_factory=list)
    #: the fused models the run built and, when ``[fuse] strategies = "auto"`` chose them, why
    fusion: dict[str, object] = field(default_factory=dict)
    #: what settings left to grappa chose for this project and machine (:mod:`grappa_cli.pipeline.choices`)
    chosen: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.stages)

    def to_dict(self) -> dict[str, object]:
        return {"changed": self.changed, "planned": self.planned, "fusion": self.fusion, "chosen": self.chosen,
                "stages": [{"stage": s.stage, "done": s.done, "skipped": s.skipped, "seconds": round(s.seconds, 1)}
                           for s in self.stages]}


def run_pipeline(project: Project, *, device: str | None = None, reporter: PipelineReporter | None = None,
                 until: str | None = None, full: bool = False,
                 on_plan: Callable[[GrappaConfig, Plan], None] | None = None,
                 on_extracted: Callable[[GrappaConfig], None] | None = None) -> RunOutcome:
    """Run the pipeline up to ``until`` (default: through the report).

    ``full``: extract a grown training set from scratch, so that every set is clustered and
    trained again on the union (instead of the incremental update, :mod:`grappa_cli.records.increments`).
    ``on_plan(config, plan)``: called with the plan before any stage runs (the CLI announces its
    time estimate from it). ``on_extracted(config)``: called once the extract stage has run (a
    fresh project has measured nothing before it, so the first estimate is only possible then;
    the callback plans the remaining work only if it needs to: planning stats every image).
    """
    from grappa_cli.console import NullReporter
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.choices import chosen_settings
    from grappa_cli.pipeline.plugin_check import check_config
    from grappa_cli.runtime import return_freed_memory

    # One configuration for the whole run: every stage reads the pinned one, and an edit of
    # grappa.toml while the run works stops it before the next stage instead of half-applying it.
    with project.pinned_config() as config:
        check_config(config)  # a misspelt plugin name fails now, not after hours of work
        stages = STAGES[: STAGES.index(Stage(until)) + 1] if until else STAGES
        plan = planner.build(project, config, full=full, device=device)
        if on_plan is not None:
            on_plan(config, plan)
        planned = [node.id for node in plan.todo() if node.stage in stages]
        view: Reporter = reporter or NullReporter()
        outcomes: list[StageOutcome] = []
        for spec in specs():
            if spec.stage not in stages:
                continue
            project.require_config_unchanged("run")
            announce: Callable[[str], None] | None = getattr(view, "stage", None)
            if announce is not None:
                announce(f"[{len(outcomes) + 1}/{len(stages)}] {spec.stage}")
            runner = spec.run_full if full and spec.run_full is not None else _RUNNERS[spec.stage]
            started = time.perf_counter()
            outcome = runner(project, config, device, view)
            outcome.seconds = time.perf_counter() - started
            outcomes.append(outcome)
            return_freed_memory()  # each stage starts small again, not on top of the last one's peak
            if spec.stage == Stage.extract and on_extracted is not None and not full and spec.stage != stages[-1]:
                on_extracted(config)
            step_done: Callable[[], None] | None = getattr(view, "step_done", None)
            if step_done is not None:
                step_done()
        project.require_config_unchanged("run")
    return RunOutcome(outcomes, planned=planned, fusion=plan.fusion.to_dict(), chosen=chosen_settings(config, plan))
