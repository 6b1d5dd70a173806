"""What each stage has produced, what is stale or missing, and what to run next."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from grappa_cli.pipeline.freshness import record_fields
from grappa_cli.pipeline.stage import Stage
from grappa_cli.project import Project

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.pipeline.planner import Plan


class MetricsStep(TypedDict, total=False):
    """A ``"kind": "step"`` line of a training run's ``metrics.jsonl`` (the fields read here)."""

    kind: str
    epoch: int
    step: int


@dataclass
class ArtifactStatus:
    """One produced (or expected) artifact."""

    stage: str
    id: str
    state: str  # complete | partial | running | stale | missing
    detail: str = ""
    stale_inputs: list[str] = field(default_factory=list)
    #: test splits: how many of its images duplicate training images (None: not checked yet)
    duplicates: int | None = None


@dataclass
class ProjectStatus:
    root: str
    artifacts: list[ArtifactStatus]
    next_steps: list[str]
    #: what an incremental update of the training set will do (empty when none is pending)
    update: list[str] = field(default_factory=list)
    #: how long the remaining work will take (from rates measured in the project), or why unknown
    remaining: str = ""
    remaining_seconds: dict[str, float] = field(default_factory=dict)
    #: what settings left to ``auto`` chose for this machine, one sentence each
    chosen: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"root": self.root, "artifacts": [_artifact_dict(a) for a in self.artifacts], "next": self.next_steps,
                "update": self.update, "remaining": self.remaining, "chosen": self.chosen,
                "remaining_seconds": {k: round(v, 1) for k, v in self.remaining_seconds.items()}}


def _artifact_dict(item: ArtifactStatus) -> dict[str, object]:
    """An artifact for ``--json``; ``duplicates`` only on test splits that were checked."""
    out = asdict(item)
    if out["duplicates"] is None:
        del out["duplicates"]
    return out


def _detail(rec: Mapping[str, object] | None) -> str:
    if not rec:
        return ""
    summary = record_fields(rec, "summary")
    return ", ".join(f"{k}={v}" for k, v in summary.items())


def collect(project: Project) -> ProjectStatus:
    """Every artifact of the project's plan (:mod:`grappa_cli.pipeline.planner`): what ``grappa run`` would do.

    Reads records and stats the images; loads no model.
    """
    from grappa_cli.pipeline import planner

    config = project.config()
    plan = planner.build(project, config)
    items: list[ArtifactStatus] = []
    threads = _threads_now()
    holder = project.lock_holder()
    for node in plan.nodes:
        if holder is not None and node.state == "partial":  # not interrupted: being made right now
            node.state, node.reason = "running", _running(project, node.id, holder)
        detail = _detail(node.record)
        other = _other_conditions(node.record, threads) if node.state == "complete" else ""
        if other:
            detail = f"{detail}; {other}" if detail else other
        if node.state != "complete" and node.reason and node.reason != "not made yet":
            detail = f"{detail}; {node.reason}" if detail else node.reason
        if not node.configured:
            detail = f"{detail}; not in grappa.toml" if detail else "not in grappa.toml"
        dups = _duplicates(project, config, node.id) if node.state == "complete" else None
        if dups:
            detail = f"{detail}; {dups} duplicate training images" if detail else f"{dups} duplicate training images"
        items.append(ArtifactStatus(node.stage, node.id, node.state, detail, node.stale_inputs, dups))
    items += _side_artifacts(project)
    remaining, seconds = "", {}
    if plan.todo():
        from grappa_cli.pipeline.estimate import estimate

        guess = estimate(project, config, plan)
        remaining, seconds = guess.line(), guess.seconds
    cached = None
    if project.store_path.exists():
        cache = project.store(mode="r").provenance("cache/train") or {}
        cached = int(cache["images"]) if cache.get("complete") and "images" in cache else None
    from grappa_cli.pipeline.choices import chosen_settings

    chosen = chosen_settings(config, plan)
    return ProjectStatus(str(project.root), items, _next_steps(config, plan),
                         incremental_update(config, plan, cached), remaining, seconds, chosen)


def _duplicates(project: Project, config: GrappaConfig, artifact_id: str) -> int | None:
    """How many test images of a test split duplicate training images, from the stored check."""
    if not artifact_id.startswith("features/test/") or not project.store_path.exists():
        return None
    from grappa_cli.pipeline.stages import duplicates

    found = duplicates.stored(project.store(mode="r"), config, artifact_id.removeprefix("features/test/"))
    return None if found is None else found.count


def _running(project: Project, artifact_id: str, holder: Mapping[str, object]) -> str:
    """``pid 123 (`grappa run`, started ...), epoch 3, step 40``: who makes a partial artifact, how far."""
    who = f"pid {holder.get('pid')} (`grappa {holder.get('command', '?')}`, started {holder.get('started', '?')})"
    stage, _, name = artifact_id.partition("/")
    run = {"adaptors": f"adapt-{name}", "fusion": f"fuse-{name}"}.get(stage)
    last = _last_step(project.runs_dir / run / "metrics.jsonl") if run else None
    if last:
        who += f", epoch {int(last.get('epoch', 0)) + 1}, step {last.get('step')}"
    return f"running: {who}"


def _last_step(path: Path) -> MetricsStep | None:
    """The last ``"kind": "step"`` line of a training run's metrics log, if any."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry: MetricsStep = json.loads(line)
        except ValueError:
            continue
        if entry.get("kind") == "step":
            return entry
    return None


def _threads_now() -> int:
    """The intra-op threads a ``grappa`` process of this machine runs with (``runtime.cpu_thread_settings``)."""
    import os

    from grappa_cli.runtime import usable_cpus

    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return usable_cpus()


def _other_conditions(record: Mapping[str, object] | None, threads: int) -> str:
    """Why a rerun on this machine would not reproduce ``record``'s numbers bit for bit, or ''.

    Only what changes numbers is named: the CPU thread count (it orders floating-point sums) and
    the processor kind. Records made before these were kept say nothing.
    """
    import platform

    compute = record_fields(record, "compute")
    notes = []
    if compute.get("machine") and compute["machine"] != platform.machine():
        notes.append(f"made on {compute['machine']}")
    made = compute.get("threads")
    if made and isinstance(made, int | float | str) and int(made) != threads:
        notes.append(f"made with {made} CPU thread(s), this machine runs {threads}")
    return ("; ".join(notes) + ": on the CPU a rerun differs in the last digits") if notes else ""


def incremental_update(config: GrappaConfig, plan: Plan, cached: int | None = None) -> list[str]:
    """Lines saying what ``grappa run`` will do to add the images of an incremental update.

    ``cached``: images in a complete training cache (``grappa run`` grows it by the added images).
    """
    added = [entry for entry in plan.increments if entry.increment.index > 0 and (
        entry.features is None or any(n.todo for n in plan.nodes if n.id in {f"adaptors/{s}" for s in entry.names}))]
    if not added:
        return []
    kept = [name for entry in plan.increments if entry not in added for name in entry.names
            if (node := plan.get(f"adaptors/{name}")) is not None and not node.todo]
    lines = []
    for entry in added:
        inc = entry.increment
        what = ", ".join(inc.parts) or inc.name
        extract = "extract" if entry.features is None else "extracted:"
        lines.append(f"{extract} {entry.images} added training images ({what}), rows {inc.start}-{inc.stop - 1}; "
                     f"the {inc.start} rows before them are kept as they are")
        if cached is not None and entry.features is None and cached == inc.start:
            lines.append(f"decode them into the image cache (cache/train keeps its {cached} images)")
        if config.adapt.replay > 0:
            lines.append(f"cluster them and train {len(entry.names)} new adaptor sets on them, each also on "
                         f"{config.adapt.replay:g}x as many earlier training images ([adapt] replay): "
                         f"{', '.join(entry.names)}")
        else:
            lines.append(f"cluster and train {len(entry.names)} new adaptor sets on them alone: "
                         f"{', '.join(entry.names)}")
    if kept:
        lines.append(f"keep {len(kept)} adaptor sets untouched: {', '.join(kept)}")
    fused = [n.id.split("/", 1)[1] for n in plan.nodes if n.stage == Stage.fuse and n.todo]
    if fused:
        start = "from scratch"
        if config.fuse.warm_start:
            start = "starting from the current fused models" + (
                "' Q and K ([fuse] warm_scale resets the logit scales)" if config.fuse.warm_scale == "reset" else "")
        lines.append(f"retrain the fusion over all sets on the union ({', '.join(fused)}), {start}")
    lines.append("evaluate every task; `grappa run --full` rebuilds everything on the union instead")
    return lines


def _side_artifacts(project: Project) -> list[ArtifactStatus]:
    """Image caches and gallery embeddings: not pipeline steps, shown with the direct rule."""
    from grappa_cli.records import artifacts

    if not project.store_path.exists():
        return []
    store = project.store(mode="r")
    found = []
    for stage, group in (("cache", "cache"), ("index", "gallery")):
        for name in store.children(group):
            rec = store.provenance(f"{group}/{name}")
            stale: list[str]
            if rec is None:
                state, stale = "missing", []
            elif not rec.get("complete"):
                state, stale = "partial", []
            else:
                stale = artifacts.stale_inputs(project, rec, store)
                state = "stale" if stale else "complete"
            found.append(ArtifactStatus(stage, f"{group}/{name}", state, _detail(rec), stale))
    return found


def _next_steps(config: GrappaConfig, plan: Plan) -> list[str]:
    steps: list[str] = []
    problem = _training_set_problem(config)
    if problem:  # no stage can run before data.train can be read
        steps.append(problem)
        return steps
    todo = plan.todo()
    stage = plan.first_stage()
    if stage is not None:
        from grappa_cli.pipeline.stage_table import spec

        bad = [n for n in todo if n.stage == stage and n.state in ("stale", "partial")]
        reason = f" ({', '.join(f'{n.id} is {n.state}' for n in bad)})" if bad else ""
        later = sorted({n.stage for n in todo} - {stage}, key=list(Stage).index)
        then = f", then {', '.join(later)} (or all at once: `grappa run`)" if later else ""
        steps.append(f"run `{spec(stage).command}`{reason}{then}")
    return steps


def _training_set_problem(config: GrappaConfig) -> str | None:
    """What to fix first when ``data.train`` cannot be read (no stage can run before that)."""
    from grappa_cli.data.sources import MRT, mrt_members
    from grappa_cli.errors import GrappaError

    if MRT not in config.data.train:
        return None
    try:
        mrt_members(config)
    except GrappaError:
        if not config.tasks:
            return ("add your images: `grappa task add NAME ROOT --train` (a folder of class folders), "
                    "or the six MRT datasets for the paper's setting")
        names = " ".join(config.tasks)
        return (f'data.train is "mrt" but the six MRT tasks are not all configured: train on your tasks with '
                f"`grappa task add NAME ROOT --train --force` or set data.train = [...] ({names}) in grappa.toml")
    return None


def dumps(status: ProjectStatus) -> str:
    return json.dumps(status.to_dict(), indent=2)
