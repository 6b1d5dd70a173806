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

The rates are the work's own; a stage also has costs no rate holds (building the model, loading
sets, scoring, writing). So the estimate learns from the project's runs: every run's record
(``.grappa/runs.jsonl``) keeps the estimate it announced beside the seconds each stage took, and
a priced stage's seconds are multiplied by its latest actual-to-estimated ratio
(:func:`calibration`, bounded to :data:`CALIBRATION_BOUNDS`; none from a stage whose rate was
borrowed, *rough*). Stages no rate prices (clustering,
the report) are counted at the seconds they last took, when they ran in a recorded run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grappa_cli.pipeline.rates import ADAPT_PER_EMBED, FUSE_PER_ADAPT, Estimate, Pricing, Rates, measured
from grappa_cli.pipeline.stage import Stage
from grappa_cli.pipeline.stage_table import spec

if TYPE_CHECKING:
    from collections.abc import Collection

    from grappa_cli.config import GrappaConfig
    from grappa_cli.pipeline.planner import Plan
    from grappa_cli.project import Project

__all__ = ["ADAPT_PER_EMBED", "CALIBRATION_BOUNDS", "FUSE_PER_ADAPT", "Calibration", "Estimate", "Pricing", "Rates",
           "calibration", "estimate", "measured"]

#: The least and the most an earlier run's actual-to-estimated ratio may scale a stage's price:
#: a run much shorter or longer than estimated says more about that run (a busy machine, a
#: stage cut short) than about the next.
CALIBRATION_BOUNDS = (0.67, 2.0)
#: Run records read, from the end of ``runs.jsonl``.
RECORDS_READ = 50


@dataclass
class Calibration:
    """What the project's recorded runs say about the estimate (see the module docstring)."""

    #: stage -> actual seconds over estimated seconds, of the latest run that announced and ran it
    ratio: dict[str, float] = field(default_factory=dict)
    #: stage -> the seconds it last took, for stages no rate prices
    last_seconds: dict[str, float] = field(default_factory=dict)


def calibration(project: Project) -> Calibration:
    """Ratios and last seconds from the latest :data:`RECORDS_READ` run records that have them."""
    import json

    path = project.state_dir / "runs.jsonl"
    result = Calibration()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[-RECORDS_READ:]
    except OSError:
        return result
    low, high = CALIBRATION_BOUNDS
    for line in lines:  # oldest first: later runs overwrite
        try:
            record = json.loads(line)
        except ValueError:
            continue
        stages = record.get("stages") if isinstance(record, dict) else None
        if not isinstance(stages, list):
            continue
        estimate = record.get("estimate") or {}
        announced = estimate.get("priced") or estimate.get("seconds") or {}
        # a stage priced with a rate borrowed from another stage says how wrong the borrowing
        # was, not how this project's own rate misses its overheads: no ratio from it
        borrowed = set(estimate.get("rough") or [])
        for entry in stages:
            if not isinstance(entry, dict) or not entry.get("done") or "seconds" not in entry:
                continue
            stage, seconds = str(entry.get("stage")), float(entry["seconds"])
            try:
                priced = spec(stage).price is not None
            except (KeyError, ValueError):  # a stage this version does not know
                continue
            if not priced:
                result.last_seconds[stage] = seconds
            elif stage not in borrowed and float(announced.get(stage) or 0) > 0:
                result.ratio[stage] = min(high, max(low, seconds / float(announced[stage])))
    return result


def estimate(project: Project, config: GrappaConfig, plan: Plan,
             stages: Collection[str] | None = None) -> Estimate:
    """Seconds of the work ``plan`` announces (:func:`grappa_cli.pipeline.planner.build`), stage by
    stage; only that of ``stages`` when given (``grappa run --until`` stops before the others)."""
    store = project.store(mode="r") if project.store_path.exists() else None
    pricing = Pricing(config, plan, measured(project, store))
    todo = [node for node in plan.todo() if stages is None or node.stage in stages]
    for node in todo:
        price = spec(node.stage).price
        if price is not None:
            price(pricing, node)
    learned = calibration(project)
    seconds = {stage: s * learned.ratio.get(stage, 1.0) for stage, s in pricing.seconds.items()}
    for stage in dict.fromkeys(str(node.stage) for node in todo):
        if stage in learned.last_seconds and stage not in seconds:
            seconds[stage] = learned.last_seconds[stage]
    ordered = {str(stage): seconds[str(stage)] for stage in Stage if str(stage) in seconds}
    return Estimate(ordered, [s for s in pricing.rates.rough if s in ordered], pricing.unknown,
                    priced=dict(pricing.seconds))
