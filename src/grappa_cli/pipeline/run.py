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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grappa_cli.console import PipelineReporter
from grappa_cli.project import Project

STAGES = ("extract", "cluster", "adapt", "fuse", "eval", "report")


@dataclass
class StageOutcome:
    stage: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.done)


@dataclass
class RunOutcome:
    stages: list[StageOutcome]
    report: Any = None
    #: what the plan (``grappa status``) announced before the run: artifact ids to (re)make
    planned: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "planned": self.planned,
                "stages": [{"stage": s.stage, "done": s.done, "skipped": s.skipped} for s in self.stages]}


def run_pipeline(project: Project, *, device: str | None = None, reporter: PipelineReporter | None = None,
                 until: str | None = None, full: bool = False,
                 on_plan: Callable[[Any, Any], None] | None = None) -> RunOutcome:
    """Run the pipeline up to ``until`` (default: through the report).

    ``full``: extract a grown training set from scratch, so that every set is clustered and
    trained again on the union (instead of the incremental update, :mod:`grappa_cli.records.increments`).
    ``on_plan(config, plan)``: called with the plan before any stage runs (the CLI announces its
    time estimate from it).
    """
    from grappa_cli.console import NullReporter
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.plugin_check import check_config

    # One configuration for the whole run: every stage reads the pinned one, and an edit of
    # grappa.toml while the run works stops it before the next stage instead of half-applying it.
    with project.pinned_config() as config:
        check_config(config)  # a misspelt plugin name fails now, not after hours of work
        stages = STAGES[: STAGES.index(until) + 1] if until else STAGES
        plan = planner.build(project, config, full=full)
        if on_plan is not None:
            on_plan(config, plan)
        planned = [node.id for node in plan.todo() if node.stage in stages]
        view: Any = reporter or NullReporter()
        outcomes: list[StageOutcome] = []
        for stage in stages:
            project.require_config_unchanged("run")
            if hasattr(view, "stage"):
                view.stage(f"[{len(outcomes) + 1}/{len(stages)}] {stage}")
            outcome = (_extract(project, config, device, view, full=full) if stage == "extract"
                       else _RUNNERS[stage](project, config, device, view))
            outcomes.append(outcome)
            if hasattr(view, "step_done"):
                view.step_done()
        project.require_config_unchanged("run")
    return RunOutcome(outcomes, planned=planned)


def _extract(project: Project, config: Any, device: str | None, view: Any, *, full: bool = False) -> StageOutcome:
    from grappa_cli.pipeline.stages.cache import grow_training_cache
    from grappa_cli.pipeline.stages.extract import ExtractOptions, extract

    if full:  # from scratch: the training features are made anew as one increment
        from grappa_cli.pipeline.stages.extract import TRAIN_KEY

        store = project.store()
        record = store.provenance(TRAIN_KEY) or {}
        if len(record.get("increments") or []) > 1 or record.get("growing"):
            store.delete(TRAIN_KEY)
    results = extract(project, ExtractOptions(device=device, refresh=True, full=full), view)
    outcome = StageOutcome("extract", [r.key for r in results if not r.skipped],
                           [r.key for r in results if r.skipped])
    # an incremental update appended images: a training cache of the earlier ones grows by them
    grown = grow_training_cache(project, view)
    if grown is not None:
        outcome.done.append(grown.key)
    return outcome


def _cluster(project: Project, config: Any, device: str | None, view: Any) -> StageOutcome:
    from grappa_cli.pipeline.stages.cluster import run

    report = run(project, refresh=True, reporter=view)
    outcome = StageOutcome("cluster")
    for item in report.outcomes:
        (outcome.skipped if item.status == "skipped" else outcome.done).append(item.name or f"k{item.k}")
    return outcome


def configured_sets(project: Project, config: Any) -> list[str]:
    """The adaptor sets of every increment of the stored training set (``auto`` resolved)."""
    from grappa_cli.records import increments

    return increments.set_names(config, project.store(mode="r"))


def _adapt(project: Project, config: Any, device: str | None, view: Any) -> StageOutcome:
    from grappa_cli.pipeline.stages.adapt import AdaptOptions, adapt

    results = adapt(project, AdaptOptions(sets=configured_sets(project, config), device=device, refresh=True),
                    view)
    return StageOutcome("adapt", [r.name for r in results if not r.skipped], [r.name for r in results if r.skipped])


def _fuse(project: Project, config: Any, device: str | None, view: Any) -> StageOutcome:
    from grappa_cli.fusion.base import FusionOptions
    from grappa_cli.pipeline.stages.fuse import fuse

    sets = configured_sets(project, config)
    outcome = StageOutcome("fuse")
    for strategy in config.fuse.strategies:
        result = fuse(project, strategy, sets, FusionOptions(device=device, refresh=True), view)
        (outcome.skipped if result.skipped else outcome.done).append(strategy)
    return outcome


def _eval(project: Project, config: Any, device: str | None, view: Any) -> StageOutcome:
    from grappa_cli.pipeline.stages.evaluate import EvalOptions, evaluate

    evaluation = evaluate(project, EvalOptions(device=device), view)
    outcome = StageOutcome("eval")
    for entry in evaluation.entries:
        (outcome.done if entry.computed else outcome.skipped).append(f"{entry.model}/{entry.task}")
    return outcome


def _report(project: Project, config: Any, device: str | None, view: Any) -> StageOutcome:
    """Rewrite the report unless its manifest shows exactly the current results, all files written."""
    from grappa_cli.reporting.report import ReportOptions, report, report_state

    outcome = StageOutcome("report")
    table = project.reports_dir / "table2.md"
    if report_state(project) == "complete":
        outcome.skipped.append(str(table))
        return outcome
    outcome.done.extend(report(project, ReportOptions(device=device), view).files)
    return outcome


_RUNNERS = {"extract": _extract, "cluster": _cluster, "adapt": _adapt, "fuse": _fuse, "eval": _eval,
            "report": _report}
