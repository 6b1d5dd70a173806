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

from dataclasses import dataclass, field
from typing import Any

from grappa_cli.pipeline.freshness import require_current
from grappa_cli.pipeline.stages.models import WEIGHTS
from grappa_cli.project import Project
from grappa_cli.records import artifacts

__all__ = ["STAGE_COMMANDS", "Node", "Plan", "build", "require_current"]

#: Recorded inputs that are not artifacts, and how a change of each reads in ``grappa status``.
_NOT_ARTIFACTS = {WEIGHTS: "the model's files were rewritten (retrained with the same settings)"}


def _changed(input_id: str, recorded: dict[str, Any]) -> str:
    if input_id in _NOT_ARTIFACTS and input_id not in recorded:  # a record from before the input existed
        return f"made by an older grappa that did not record {input_id}"
    return _NOT_ARTIFACTS.get(input_id, f"{input_id} changed")

STAGE_COMMANDS = {"extract": "grappa extract", "cluster": "grappa cluster", "adapt": "grappa adapt",
                  "fuse": "grappa fuse", "eval": "grappa eval", "report": "grappa report"}


@dataclass
class Node:
    """One artifact: which stage makes it, from what, and whether it must be (re)made."""

    id: str
    stage: str
    state: str  # complete | partial | stale | missing
    inputs: list[str] = field(default_factory=list)
    reason: str = ""
    stale_inputs: list[str] = field(default_factory=list)
    configured: bool = True  # False: present in the project but not asked for by grappa.toml
    record: dict[str, Any] | None = None

    @property
    def todo(self) -> bool:
        """Whether ``grappa run`` (re)makes it."""
        return self.configured and self.state != "complete"


@dataclass
class Plan:
    nodes: list[Node]
    #: the training set's increments with their adaptor sets (:class:`grappa_cli.records.increments.IncrementSets`)
    increments: list[Any] = field(default_factory=list)

    def get(self, artifact_id: str) -> Node | None:
        return next((n for n in self.nodes if n.id == artifact_id), None)

    def todo(self) -> list[Node]:
        return [n for n in self.nodes if n.todo]

    def first_stage(self) -> str | None:
        """The earliest stage with work to do (what to run first)."""
        todo = self.todo()
        return todo[0].stage if todo else None


class _Builder:
    def __init__(self, project: Project, config: Any) -> None:
        self.project = project
        self.config = config
        self.store = project.store(mode="r") if project.store_path.exists() else None
        self.nodes: dict[str, Node] = {}

    def current(self, artifact_id: str) -> str | None:
        """Fingerprint of an input when it is complete and current, else None."""
        node = self.nodes.get(artifact_id)
        if node is not None:
            return node.record.get("fingerprint") if node.state == "complete" and node.record else None
        return artifacts.fingerprint(self.project, artifact_id, self.store)

    def record(self, artifact_id: str) -> dict[str, Any] | None:
        if artifact_id.startswith(artifacts.STORE_PREFIXES) and self.store is None:
            return None
        return artifacts.record(self.project, artifact_id, self.store)

    def add(self, artifact_id: str, stage: str, inputs: dict[str, str | None] | None,
            params: dict[str, Any] | None = None, *, configured: bool = True, partial: bool = False) -> Node:
        """Judge ``artifact_id`` against the ``inputs`` (id -> current fingerprint) it needs now.

        ``params``: what the stage would record today (compared key by key); ``partial``:
        interrupted work exists beside a missing record.
        """
        rec = self.record(artifact_id)
        node = Node(artifact_id, stage, "missing", list(inputs or {}), configured=configured, record=rec)
        recorded = (rec or {}).get("inputs") or {}
        words = {i: _changed(i, recorded) for i in _NOT_ARTIFACTS}
        verdict = artifacts.judge(rec, params, inputs, project=self.project, store=self.store,
                                  interrupted=partial, input_words=words)
        node.state, node.reason, node.stale_inputs = verdict.state, verdict.reason, verdict.stale_inputs
        self.nodes[artifact_id] = node
        return node


def build(project: Project, config: Any | None = None, *, full: bool = False) -> Plan:
    """The plan of ``project`` for its current ``grappa.toml`` (reads records and stats images).

    ``full``: plan a rebuild from scratch of a grown training set (``grappa run --full``).
    """
    config = config or project.config()
    b = _Builder(project, config)
    sets = _features(b, full or config.data.update == "full")
    _clusters(b, sets)
    _adaptors(b, sets)
    names = [name for entry in sets for name in entry.names]
    _fusion(b, names)
    _results(b, names)
    _report(b)
    return Plan(list(b.nodes.values()), sets)


def _features(b: _Builder, full: bool) -> list[Any]:
    """Judge the features groups; returns the increments of the training set with their sets."""
    from grappa_cli.data import sources
    from grappa_cli.errors import GrappaError
    from grappa_cli.pipeline.stages.extract import TRAIN_KEY, test_key
    from grappa_cli.records import increments

    def listed(make: Any) -> Any:
        try:
            return make()
        except GrappaError:  # `grappa extract` stops with it; status's next step says what to add
            return None

    train = listed(lambda: sources.training_set(b.config))
    lists = [(TRAIN_KEY, train)]
    for task in listed(lambda: sources.evaluation_tasks(b.config)) or []:
        lists.append((test_key(task), listed(lambda t=task: sources.test_set(b.config, t))))
    name = b.config.backbone.name
    pending: list[Any] = []
    keep_stored = True
    for key, images in lists:
        node = b.add(key, "extract", {})
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
        recorded = node.record.get("inputs") or {}
        why = []
        if images is not None and "images" in recorded and recorded["images"] != images.fingerprint():
            why.append("its images changed")
        made_with = str((node.record.get("params") or {}).get("backbone", ""))
        if "@" in made_with and made_with.split("@", 1)[0] != name:
            why.append(f"the backbone changed ({made_with.split('@', 1)[0]} -> {name})")
        if why:
            node.state, node.reason = "stale", "; ".join(why)
    if b.store is not None:
        for task in b.store.children("features/test"):
            if test_key(task) not in b.nodes:
                b.add(test_key(task), "extract", {}, configured=False)
    train_node = b.nodes[TRAIN_KEY]
    if train_node.state != "complete" and not pending:  # extracted (or resumed) from scratch: one increment
        keep_stored = False
        if train is not None:
            pending = [increments.Increment(0, 0, len(train.paths), [])]
    try:
        return increments.configured(b.config, b.store, pending, use_stored=keep_stored)
    except GrappaError:
        return []


def _growth(b: _Builder, node: Node, images: Any, full: bool) -> tuple[list[Any], bool] | None:
    """When the training features can grow to ``images``: (the increment to extract, keep stored).

    Marks ``node`` stale (or keeps it partial, for an interrupted update) with the reason.
    None when the features are complete for ``images`` or must be extracted from scratch.
    """
    from grappa_cli.errors import GrappaError
    from grappa_cli.pipeline.stages.extract import training_part_names
    from grappa_cli.records import increments

    rec = node.record or {}
    made_with = str((rec.get("params") or {}).get("backbone", ""))
    if full or ("@" in made_with and made_with.split("@", 1)[0] != b.config.backbone.name):
        return None
    if rec.get("complete") and (rec.get("inputs") or {}).get("images") == images.fingerprint():
        return None

    params = rec.get("params") or {}
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


def _clusters(b: _Builder, sets: list[Any]) -> None:
    from grappa_cli import plugins
    from grappa_cli.clustering.base import settings_of
    from grappa_cli.pipeline.stages.cluster import cluster_key, cluster_params
    from grappa_cli.records import increments

    cfg = b.config.cluster
    settings = settings_of(plugins.get("clusterers", cfg.backend))
    for entry in sets:
        for k, name in zip(entry.ks, entry.names, strict=True):
            params = {**cluster_params(k, cfg.backend, cfg.seed, cfg.niter, settings),
                      **increments.set_params(entry.increment)}
            b.add(cluster_key(name), "cluster", {"features/train": entry.features}, params)
    _extra(b, "cluster", [f"clusters/{n}" for n in (b.store.children("clusters") if b.store else [])])


def _backbone_id(b: _Builder) -> str | None:
    node = b.nodes.get("features/train")
    rec = node.record if node else None
    return (rec or {}).get("params", {}).get("backbone") if node and node.state != "missing" else None


def _adaptors(b: _Builder, sets: list[Any]) -> None:
    from grappa_cli.pipeline.stages import replay
    from grappa_cli.pipeline.stages.adapt import AdaptOptions, adapt_params
    from grappa_cli.records import increments

    backbone = _backbone_id(b)
    for entry in sets:
        for k, name in zip(entry.ks, entry.names, strict=True):
            params = {**adapt_params(b.config, AdaptOptions(), k, backbone or ""),
                      **increments.set_params(entry.increment)}
            interrupted = (b.project.runs_dir / f"adapt-{name}").is_dir()
            inputs = {f"clusters/{name}": b.current(f"clusters/{name}"), "features/train": entry.features}
            replay_params, replayed = replay.plan(b.config, sets, name)  # as stages.adapt
            params.update(replay_params)
            inputs.update({f"clusters/{s}": b.current(f"clusters/{s}") for s in replayed})
            b.add(f"adaptors/{name}", "adapt", inputs, params, partial=interrupted)
    _extra(b, "adapt", [f"adaptors/{p.stem}" for p in b.project.adaptors_dir.glob("*.safetensors")])


def _fusion(b: _Builder, sets: list[str]) -> None:
    from grappa_cli import plugins
    from grappa_cli.fusion.base import FusionOptions, artifact_params

    inputs = {f"adaptors/{s}": b.current(f"adaptors/{s}") for s in sets}
    inputs["features/train"] = b.current("features/train")
    backbone = _backbone_id(b)
    for name in b.config.fuse.strategies:
        strategy = plugins.get("fusion_strategies", name)
        params = artifact_params(strategy, b.config, FusionOptions(), sets, backbone or "")
        interrupted = (b.project.runs_dir / f"fuse-{strategy.name}").is_dir()
        b.add(f"fusion/{strategy.name}", "fuse", dict(inputs), params, partial=interrupted)
    _extra(b, "fuse", [f"fusion/{p.stem}" for p in b.project.fusion_dir.glob("*.safetensors")])


def _results(b: _Builder, sets: list[str]) -> None:
    from grappa_cli.data import sources
    from grappa_cli.errors import GrappaError
    from grappa_cli.pipeline.stages import duplicates, models
    from grappa_cli.pipeline.stages.evaluate import PROTOCOL, metric_names, result_id

    try:
        tasks = sources.evaluation_tasks(b.config)
    except GrappaError:
        tasks = []
    names = ["backbone", *(f"adaptor:{s}" for s in sets), *(f"fused:{s}" for s in b.config.fuse.strategies)]
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
            params = {"model": ref.name, "task": task, "metrics": metrics, "protocol": PROTOCOL,
                      **(left_out[task] or {})}
            source = {} if ref.artifact else {f"features/test/{task}": b.current(f"features/test/{task}")}
            node = b.add(result_id(ref, task), "eval", {**model, **source}, params)
            if left_out[task] is None and node.state == "complete":  # on_duplicates = "drop", check not stored
                node.state, node.reason = "stale", "[data] on_duplicates = \"drop\": duplicates not checked yet"
            elif node.state == "complete" and "left_out" in (node.record or {}).get("params", {}) \
                    and "left_out" not in params:  # made without duplicates that are now kept
                node.state, node.reason = "stale", "setting on_duplicates changed"
    found = [f"results/{p.parent.name}/{p.stem}" for p in b.project.results_dir.glob("*/*.json")]
    _extra(b, "eval", found)


def _report(b: _Builder) -> None:
    from grappa_cli.reporting.report import report_state

    results_todo = any(n.todo for n in b.nodes.values() if n.stage == "eval")
    state = report_state(b.project)
    node = Node("reports/table2", "report", state, record=None)
    if state == "complete" and results_todo:
        node.state, node.reason = "stale", "results will change"
    elif state != "complete":
        node.reason = {"missing": "not made yet", "partial": "interrupted", "stale": "results changed"}[state]
    b.nodes[node.id] = node


def _extra(b: _Builder, stage: str, ids: list[str]) -> None:
    """Artifacts the project holds but grappa.toml does not ask for: shown, never redone by ``run``."""
    for artifact_id in sorted(ids):
        if artifact_id not in b.nodes:
            rec = b.record(artifact_id)
            inputs = {i: b.current(i) for i in ((rec or {}).get("inputs") or {})
                      if i.startswith((*artifacts.STORE_PREFIXES, "adaptors/", "fusion/"))}
            b.add(artifact_id, stage, inputs, configured=False)
