"""How ``grappa run`` executes each stage: one runner per stage, named by the stage table.

:func:`grappa_cli.pipeline.run.run_pipeline` calls them in order through
:mod:`grappa_cli.pipeline.stage_table`; each brings its stage's configured artifacts up to date
and says which it made and which it skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from grappa_cli.console import Reporter
from grappa_cli.pipeline.stage import Stage
from grappa_cli.project import Project

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.storage.store import Store


@dataclass
class StageOutcome:
    stage: Stage
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: wall seconds the stage took in ``grappa run`` (set by :func:`grappa_cli.pipeline.run.run_pipeline`)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.done)


class Runner(Protocol):
    """How ``grappa run`` executes one stage (:attr:`~grappa_cli.pipeline.stage_table.StageSpec.run`)."""

    def __call__(self, project: Project, config: GrappaConfig, device: str | None, view: Reporter, /) -> StageOutcome:
        ...


def run_extract(project: Project, config: GrappaConfig, device: str | None, view: Reporter, /, *,
                full: bool = False) -> StageOutcome:
    """``full`` (``grappa run --full``): extract a grown training set from scratch."""
    from grappa_cli.pipeline.stages.cache import grow_training_cache
    from grappa_cli.pipeline.stages.extract import ExtractOptions, extract

    if full:  # from scratch: the training features are made anew as one increment
        from grappa_cli.pipeline.stages.extract import TRAIN_KEY

        store: Store = project.store()
        record = store.provenance(TRAIN_KEY) or {}
        if len(record.get("increments") or []) > 1 or record.get("growing"):
            store.delete(TRAIN_KEY)
    results = extract(project, ExtractOptions(device=device, refresh=True, full=full), view)
    outcome = StageOutcome(Stage.extract, [r.key for r in results if not r.skipped],
                           [r.key for r in results if r.skipped])
    # an incremental update appended images: a training cache of the earlier ones grows by them
    grown = grow_training_cache(project, view)
    if grown is not None:
        outcome.done.append(grown.key)
    return outcome


def run_cluster(project: Project, config: GrappaConfig, device: str | None, view: Reporter, /) -> StageOutcome:
    from grappa_cli.pipeline.stages.cluster import run

    report = run(project, refresh=True, reporter=view)
    outcome = StageOutcome(Stage.cluster)
    for item in report.outcomes:
        (outcome.skipped if item.status == "skipped" else outcome.done).append(item.name or f"k{item.k}")
    return outcome


def configured_sets(project: Project, config: GrappaConfig) -> list[str]:
    """The adaptor sets of every increment of the stored training set (``auto`` resolved)."""
    from grappa_cli.records import increments

    return increments.set_names(config, project.store(mode="r"))


def run_adapt(project: Project, config: GrappaConfig, device: str | None, view: Reporter, /) -> StageOutcome:
    from grappa_cli.pipeline.stages.adapt import AdaptOptions, adapt

    sets = configured_sets(project, config)
    results = adapt(project, AdaptOptions(sets=sets, device=device, refresh=True), view)
    return StageOutcome(Stage.adapt, [r.name for r in results if not r.skipped], [r.name for r in results if r.skipped])


def run_fuse(project: Project, config: GrappaConfig, device: str | None, view: Reporter, /) -> StageOutcome:
    from grappa_cli.fusion.base import FusionOptions
    from grappa_cli.pipeline.fusion_choice import fusion_strategies
    from grappa_cli.pipeline.stages.fuse import fuse

    sets = configured_sets(project, config)
    outcome = StageOutcome(Stage.fuse)
    for strategy in fusion_strategies(config, device).strategies:
        result = fuse(project, strategy, sets, FusionOptions(device=device, refresh=True), view)
        (outcome.skipped if result.skipped else outcome.done).append(strategy)
    return outcome


def run_eval(project: Project, config: GrappaConfig, device: str | None, view: Reporter, /) -> StageOutcome:
    from grappa_cli.pipeline.stages.evaluate import EvalOptions, evaluate

    evaluation = evaluate(project, EvalOptions(device=device), view)
    outcome = StageOutcome(Stage.eval)
    for entry in evaluation.entries:
        (outcome.done if entry.computed else outcome.skipped).append(f"{entry.model}/{entry.task}")
    return outcome


def run_report(project: Project, config: GrappaConfig, device: str | None, view: Reporter, /) -> StageOutcome:
    """Rewrite the report unless its manifest shows exactly the current results, all files written."""
    from grappa_cli.reporting.report import ReportOptions, report, report_state

    outcome = StageOutcome(Stage.report)
    table = project.reports_dir / "table2.md"
    if report_state(project) == "complete":
        outcome.skipped.append(str(table))
        return outcome
    outcome.done.extend(report(project, ReportOptions(device=device), view).files)
    return outcome
