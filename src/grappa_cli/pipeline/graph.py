"""The artifacts of a plan (:class:`Node`, :class:`Plan`) and each stage's part of planning them.

:func:`grappa_cli.pipeline.planner.build` runs the parts (``plan_features`` ... ``plan_report``)
in the order of the stage table (:mod:`grappa_cli.pipeline.stage_table`); the rules are
described in :mod:`grappa_cli.pipeline.planner`.
"""


from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grappa_cli.pipeline.freshness import record_fields as _fields
from grappa_cli.pipeline.fusion_choice import StrategyChoice, fusion_strategies
from grappa_cli.pipeline.stage import Stage
from grappa_cli.pipeline.stages.models import WEIGHTS
from grappa_cli.project import Project
from grappa_cli.records import artifacts

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.data.tasks.base import ImageList
    from grappa_cli.records.increments import Increment, IncrementSets
    from grappa_cli.storage.store import Store

__all__ = ["Node", "Plan", "PlanBuilder"]

#: Recorded inputs that are not artifacts, and how a change of each reads in ``grappa status``.
_NOT_ARTIFACTS = {WEIGHTS: "the model's files were rewritten (retrained with the same settings)"}


def _changed(input_id: str, recorded: Mapping[str, object]) -> str:
    if input_id in _NOT_ARTIFACTS and input_id not in recorded:  # a record from before the input existed
        return f"made by an older grappa that did not record {input_id}"
    return _NOT_ARTIFACTS.get(input_id, f"{input_id} changed")


@dataclass
class Node:
    """One artifact: which stage makes it, from what, and whether it must be (re)made."""

    id: str
    stage: Stage
    state: str  # complete | partial | stale | missing
    inputs: list[str] = field(default_factory=list)
    reason: str = ""
    stale_inputs: list[str] = field(default_factory=list)
    configured: bool = True  # False: present in the project but not asked for by grappa.toml
    #: the artifact's provenance record (a JSON object), None when there is none
    record: dict[str, object] | None = None

    @property
    def todo(self) -> bool:
        """Whether ``grappa run`` (re)makes it."""
        return self.configured and self.state != "complete"


@dataclass
class Plan:
    nodes: list[Node]
    #: the training set's increments with their adaptor sets
    increments: list[IncrementSets] = field(default_factory=list)
    #: the fused models the plan builds (``[fuse] strategies``, ``auto`` resolved for the device)
    fusion: StrategyChoice = field(default_factory=lambda: StrategyChoice([]))

    def get(self, artifact_id: str) -> Node | None:
        return next((n for n in self.nodes if n.id == artifact_id), None)

    def todo(self) -> list[Node]:
        return [n for n in self.nodes if n.todo]

    def first_stage(self) -> Stage | None:
        """The earliest stage with work to do (what to run first)."""
        todo = self.todo()
        return todo[0].stage if todo else None


class PlanBuilder:
    """The plan being built: each stage's :attr:`~grappa_cli.pipeline.stage_table.StageSpec.plan` adds its nodes."""

    def __init__(self, project: Project, config: GrappaConfig, *, full: bool = False,
                 device: str | None = None) -> None:
        self.project = project
        self.config = config
        #: the fused models to build, ``auto`` resolved for ``device`` (else ``[runtime] device``)
        self.fusion = fusion_strategies(config, device)
        #: plan a rebuild from scratch of a grown training set
        self.full = full
        self.store: Store | None = project.store(mode="r") if project.store_path.exists() else None
        self.nodes: dict[str, Node] = {}
        #: the training set's increments with their sets (found by the extract stage's part)
        self.sets: list[IncrementSets] = []

    @property
    def set_names(self) -> list[str]:
        """Every configured adaptor set, in fusion order."""
        return [name for entry in self.sets for name in entry.names]

    def current(self, artifact_id: str) -> str | None:
        """Fingerprint of an input when it is complete and current, else None."""
        node = self.nodes.get(artifact_id)
        if node is not None:
            found = node.record.get("fingerprint") if node.state == "complete" and node.record else None
            return found if isinstance(found, str) else None
        return artifacts.fingerprint(self.project, artifact_id, self.store)

    def record(self, artifact_id: str) -> dict[str, object] | None:
        if artifact_id.startswith(artifacts.STORE_PREFIXES) and self.store is None:
            return None
        return artifacts.record(self.project, artifact_id, self.store)

    def add(self, artifact_id: str, stage: Stage, inputs: dict[str, str | None] | None,
            params: dict[str, object] | None = None, *, configured: bool = True, partial: bool = False) -> Node:
        """Judge ``artifact_id`` against the ``inputs`` (id -> current fingerprint) it needs now.

        ``params``: what the stage would record today (compared key by key); ``partial``:
        interrupted work exists beside a missing record.
        """
        rec = self.record(artifact_id)
        node = Node(artifact_id, stage, "missing", list(inputs or {}), configured=configured, record=rec)
        recorded = _fields(rec, "inputs")
        words = {i: _changed(i, recorded) for i in _NOT_ARTIFACTS}
        verdict = artifacts.judge(rec, params, inputs, project=self.project, store=self.store,
                                  interrupted=partial, input_words=words)
        node.state, node.reason, node.stale_inputs = verdict.state, verdict.reason, verdict.stale_inputs
        self.nodes[artifact_id] = node
        return node


def plan_features(b: PlanBuilder) -> None:
    """Judge the features groups; finds the increments of the training set with their sets (``b.sets``)."""
    from grappa_cli.data import sources
    from grappa_cli.errors import GrappaError
    from grappa_cli.pipeline.stages.extract import TRAIN_KEY, test_key
    from grappa_cli.records import increments
    from grappa_cli.runtime import precision_params

    def listed(make: Callable[[], ImageList]) -> ImageList | None:
        try:
            return make()
        except GrappaError:  # `grappa extract` stops with it; status's next step says what to add
            return None

    full = b.full
    train = listed(lambda: sources.training_set(b.config))
    lists = [(TRAIN_KEY, train)]
    try:
        tasks = sources.evaluation_tasks(b.config)
    except GrappaError:
        tasks = []
    for task in tasks:
        lists.append((test_key(task), listed(functools.partial(sources.test_set, b.config, task))))
    name = b.config.backbone.name
    pending: list[Increment] = []
    keep_stored = True
    for key, images in lists:
        node = b.add(key, Stage.extract, {}, precision_params(b.config.runtime))  # the rest needs the backbone
        if key == TRAIN_KEY and node.record is not None and images is not None:
            grown = _growth(b, node, images, full)
            if grown is not None:
                pending, keep_stored = grown
                continue
            if full and len(increments.recorded(node.record)) > 1:
                node.state, node.reason = "stale", "grew incrementally; a full rebuild extracts it anew"
                continue
        if node.state != "complete" or node.record is None:
            continue
        recorded = _fields(node.record, "inputs")
        why = []
        if images is not None and "images" in recorded and recorded["images"] != images.fingerprint():
            why.append("its images changed")
        made_with = str(_fields(node.record, "params").get("backbone", ""))
        if "@" in made_with and made_with.split("@", 1)[0] != name:
            why.append(f"the backbone changed ({made_with.split('@', 1)[0]} -> {name})")
        if why:
            node.state, node.reason = "stale", "; ".join(why)
    if b.store is not None:
        for task in b.store.children("features/test"):
            if test_key(task) not in b.nodes:
                b.add(test_key(task), Stage.extract, {}, configured=False)
    train_node = b.nodes[TRAIN_KEY]
    if train_node.state != "complete" and not pending:  # extracted (or resumed) from scratch: one increment
        keep_stored = False
        if train is not None:
            pending = [increments.Increment(0, 0, len(train.paths), [])]
    try:
        b.sets = increments.configured(b.config, b.store, pending, use_stored=keep_stored)
    except GrappaError:
        b.sets = []


def _growth(b: PlanBuilder, node: Node, images: ImageList, full: bool) -> tuple[list[Increment], bool] | None:
    """When the training features can grow to ``images``: (the increment to extract, keep stored).

    Marks ``node`` stale (or keeps it partial, for an interrupted update) with the reason.
    None when the features are complete for ``images`` or must be extracted from scratch.
    """
    from grappa_cli.errors import GrappaError
    from grappa_cli.pipeline.stages.extract import training_part_names
    from grappa_cli.records import increments

    rec = node.record or {}
    params = _fields(rec, "params")
    made_with = str(params.get("backbone", ""))
    if full or ("@" in made_with and made_with.split("@", 1)[0] != b.config.backbone.name):
        return None
    if rec.get("complete") and _fields(rec, "inputs").get("images") == images.fingerprint():
        return None

    kept = increments.growth(rec, images.paths, params,
                             lambda n: increments.prefix_fingerprint(params, images.paths, n))
    if kept is None:
        return None
    try:
        parts = training_part_names(b.config)
    except GrappaError:  # the parts only name the new sets
        parts = []
    new = increments.layout(rec, len(images.paths), parts, "incremental")[-1]
    words = f"{new.rows} new training images ({', '.join(new.parts) or 'added'}); its {kept} rows are kept"
    if rec.get("complete"):
        node.state, node.reason = "stale", f"grows by {words}"
    else:
        node.reason = f"interrupted while growing by {words}; the rerun resumes it"
    return [new], True


def plan_clusters(b: PlanBuilder) -> None:
    from grappa_cli import plugins
    from grappa_cli.clustering.base import settings_of
    from grappa_cli.pipeline.stages.cluster import cluster_key, cluster_params
    from grappa_cli.records import increments

    cfg = b.config.cluster
    settings = settings_of(plugins.get("clusterers", cfg.backend))
    for entry in b.sets:
        for k, name in zip(entry.ks, entry.names, strict=True):
            params = {**cluster_params(k, cfg.backend, cfg.seed, cfg.niter, settings),
                      **increments.set_params(entry.increment)}
            b.add(cluster_key(name), Stage.cluster, {"features/train": entry.features}, params)
    _extra(b, Stage.cluster, [f"clusters/{n}" for n in (b.store.children("clusters") if b.store else [])])


def _backbone_id(b: PlanBuilder) -> str | None:
    node = b.nodes.get("features/train")
    if node is None or node.state == "missing":
        return None
    found = _fields(node.record, "params").get("backbone")
    return found if isinstance(found, str) else None


def plan_adaptors(b: PlanBuilder) -> None:
    from grappa_cli.pipeline.stages import replay
    from grappa_cli.pipeline.stages.adapt import AdaptOptions, adapt_params
    from grappa_cli.records import increments

    backbone = _backbone_id(b)
    for entry in b.sets:
        for k, name in zip(entry.ks, entry.names, strict=True):
            params = {**adapt_params(b.config, AdaptOptions(), k, backbone or ""),
                      **increments.set_params(entry.increment)}
            interrupted = (b.project.runs_dir / f"adapt-{name}").is_dir()
            inputs = {f"clusters/{name}": b.current(f"clusters/{name}"), "features/train": entry.features}
            replay_params, replayed = replay.plan(b.config, b.sets, name)  # as stages.adapt
            params.update(replay_params)
            inputs.update({f"clusters/{s}": b.current(f"clusters/{s}") for s in replayed})
            b.add(f"adaptors/{name}", Stage.adapt, inputs, params, partial=interrupted)
    _extra(b, Stage.adapt, [f"adaptors/{p.stem}" for p in b.project.adaptors_dir.glob("*.safetensors")])


def plan_fusion(b: PlanBuilder) -> None:
    from grappa_cli import plugins
    from grappa_cli.fusion.base import FusionOptions, artifact_params

    sets = b.set_names
    inputs = {f"adaptors/{s}": b.current(f"adaptors/{s}") for s in sets}
    inputs["features/train"] = b.current("features/train")
    backbone = _backbone_id(b)
    for name in b.fusion.strategies:
        strategy = plugins.get("fusion_strategies", name)
        params = artifact_params(strategy, b.config, FusionOptions(), sets, backbone or "")
        interrupted = (b.project.runs_dir / f"fuse-{strategy.name}").is_dir()
        b.add(f"fusion/{strategy.name}", Stage.fuse, dict(inputs), params, partial=interrupted)
    _extra(b, Stage.fuse, [f"fusion/{p.stem}" for p in b.project.fusion_dir.glob("*.safetensors")])


def plan_results(b: PlanBuilder) -> None:
    from grappa_cli.data import sources
    from grappa_cli.errors import GrappaError
    from grappa_cli.pipeline.stages import duplicates, models
    from grappa_cli.pipeline.stages.evaluate import PROTOCOL, metric_names, result_id

    sets = b.set_names
    try:
        tasks = sources.evaluation_tasks(b.config)
    except GrappaError:
        tasks = []
    names = ["backbone", *(f"adaptor:{s}" for s in sets), *(f"fused:{s}" for s in b.fusion.strategies)]
    refs = [models.parse(n) for n in names]
    for ref in models.available(b.project):  # `grappa eval` also scores every other model the project has
        if ref not in refs and not artifacts.stale_inputs(b.project, models.record(b.project, ref) or {}, b.store):
            refs.append(ref)
    metrics = metric_names(b.config)
    left_out = {task: duplicates.planned_left_out(b.store, b.config, task) for task in tasks}
    for ref in refs:
        # the backbone's results are scored on features/test/<task>, the others on the model's artifact
        model = ({ref.artifact: b.current(ref.artifact), models.WEIGHTS: models.weights_digest(b.project, ref)}
                 if ref.artifact else {})
        for task in tasks:
            params: dict[str, object] = {"model": ref.name, "task": task, "metrics": metrics, "protocol": PROTOCOL,
                                         **(left_out[task] or {})}
            source = {} if ref.artifact else {f"features/test/{task}": b.current(f"features/test/{task}")}
            node = b.add(result_id(ref, task), Stage.eval, {**model, **source}, params)
            if left_out[task] is None and node.state == "complete":  # on_duplicates = "drop", check not stored
                node.state, node.reason = "stale", "[data] on_duplicates = \"drop\": duplicates not checked yet"
            elif node.state == "complete" and "left_out" in _fields(node.record, "params") \
                    and "left_out" not in params:  # made without duplicates that are now kept
                node.state, node.reason = "stale", "setting on_duplicates changed"
    found = [f"results/{p.parent.name}/{p.stem}" for p in b.project.results_dir.glob("*/*.json")]
    _extra(b, Stage.eval, found)


def plan_report(b: PlanBuilder) -> None:
    from grappa_cli.reporting.report import report_state

    results_todo = any(n.todo for n in b.nodes.values() if n.stage == Stage.eval)
    state = report_state(b.project)
    node = Node("reports/table2", Stage.report, state, record=None)
    if state == "complete" and results_todo:
        node.state, node.reason = "stale", "results will change"
    elif state != "complete":
        node.reason = {"missing": "not made yet", "partial": "interrupted", "stale": "results changed"}[state]
    b.nodes[node.id] = node


def _extra(b: PlanBuilder, stage: Stage, ids: list[str]) -> None:
    """Artifacts the project holds but grappa.toml does not ask for: shown, never redone by ``run``."""
    for artifact_id in sorted(ids):
        if artifact_id not in b.nodes:
            inputs = {i: b.current(i) for i in _fields(b.record(artifact_id), "inputs")
                      if i.startswith((*artifacts.STORE_PREFIXES, "adaptors/", "fusion/"))}
            b.add(artifact_id, stage, inputs, configured=False)
