"""``grappa eval``: leave-one-out retrieval on each task's test split, for each model (section 4.1).

For every (model, task):

1. the test images are embedded by the model into ``store.zarr/eval/<model dirname>/<task>``:
   from the pixel cache of :mod:`grappa_cli.pipeline.stages.eval_images` (each test image list decoded
   once for every model and later run; each model embeds each image once for all tasks over
   it), or under ``torchrun`` with :func:`grappa_cli.pipeline.stages.embed.run_embedding` (resumable,
   chunked, parallel). The group's record holds the backbone parameters and the model name
   (params) and the image list's and model artifact's fingerprints and the digest of the model's
   files (inputs, ``weights``), so retraining a model changes what its embeddings should be, even
   a retrain with the same settings that wrote other weights: a stale group is simply recomputed. The
   ``backbone`` model reuses ``features/test/<task>`` when ``grappa extract`` made it complete
   with the same backbone parameters and images (the features are the same function);
2. MAP@R, R-Precision, Recall@k (``eval.recall_at``) and every other installed metric plugin
   are computed on the images that could be read (:func:`grappa_cli.retrieval.metrics.retrieval_metrics`,
   on rank 0), and written atomically to ``results/<model dirname>/<task>.json`` with a
   provenance record whose inputs are the embeddings' and the model's artifact ids. A result
   whose inputs and parameters have not changed is not recomputed.

A model whose own provenance is stale (e.g. a fused model whose adaptor sets were retrained
since) is not evaluated: its file no longer describes the model that would be built.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from grappa_cli.console import NullReporter, Reporter
from grappa_cli.errors import ConfigError, DataError, StoreError
from grappa_cli.pipeline.stages import models as models_mod
from grappa_cli.pipeline.stages.models import ModelRef
from grappa_cli.project import Project
from grappa_cli.records import artifacts
from grappa_cli.records import provenance as prov
from grappa_cli.reporting.results import TABLE_METRICS, OracleChoice, StoredResult, oracle, read_result
from grappa_cli.suggest import did_you_mean

if TYPE_CHECKING:
    import torch

    from grappa_cli.config import GrappaConfig
    from grappa_cli.model.backbones.backbone import Backbone
    from grappa_cli.model.grappa import GrappaModel
    from grappa_cli.pipeline.stages import eval_images
    from grappa_cli.pipeline.stages.embed import EmbedJob
    from grappa_cli.storage.store import Store

#: What leave-one-out means here (part of every result's parameters).
PROTOCOL = "leave-one-out; cosine similarity; query excluded by index; classes of one image give no query"


def eval_key(ref: ModelRef, task: str) -> str:
    """Store group of the model's test embeddings: ``eval/<model dirname>/<task>``."""
    return f"eval/{ref.dirname}/{task}"


def result_id(ref: ModelRef, task: str) -> str:
    """Artifact id of a result: ``results/<model dirname>/<task>``."""
    return f"results/{ref.dirname}/{task}"


@dataclass
class EvalOptions:
    tasks: list[str] | None = None
    models: list[str] | None = None
    device: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    force: bool = False


@dataclass
class EvalEntry:
    """The result of one (model, task), as stored in its JSON file."""

    model: str
    task: str
    metrics: dict[str, float]
    num_queries: int
    num_skipped: int
    images: int
    unreadable: int
    uses_labels: bool
    embeddings: str
    path: str
    computed: bool  # False when the stored result was already current
    embedded: bool  # True when the test images were embedded in this run
    seconds: float = 0.0

    def stored(self) -> StoredResult:
        from pathlib import Path

        return StoredResult(self.model, self.task, self.metrics, self.num_queries, self.num_skipped, self.images,
                            self.uses_labels, self.embeddings, Path(self.path), self.unreadable)


@dataclass
class SkippedModel:
    model: str
    reason: str
    hint: str


@dataclass
class EvalRun:
    tasks: list[str]
    models: list[str]
    entries: list[EvalEntry] = field(default_factory=list)
    skipped_models: list[SkippedModel] = field(default_factory=list)
    oracle: dict[str, OracleChoice] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "models": self.models, "results": [asdict(e) for e in self.entries],
                "oracle": {t: c.to_dict() for t, c in self.oracle.items()},
                "skipped_models": [asdict(s) for s in self.skipped_models]}


# -- what to evaluate ------------------------------------------------------------------------


def resolve_tasks(config: GrappaConfig, names: list[str] | None) -> list[str]:
    """``--task`` values (``mrt`` = the six MRT tasks configured), or ``eval.tasks`` / every test split."""
    from grappa_cli.data import sources

    if not names:
        configured = sources.evaluation_tasks(config)
        if not configured:
            raise ConfigError("no task with a test split is configured",
                              hint="add one with `grappa task add NAME ROOT`")
        return configured
    tasks: list[str] = []
    for name in names:
        if name == sources.MRT and name not in config.tasks:
            try:
                expanded = sources.mrt_members(config)
            except ConfigError as exc:
                raise ConfigError(exc.message.replace('"mrt" in data.train', "--task mrt"), hint=exc.hint) from None
        else:
            sources.task_entry(config, name)  # unknown names: error with did-you-mean
            expanded = [name]
        tasks += [t for t in expanded if t not in tasks]
    return tasks


def _fix_for(ref: ModelRef) -> str:
    if ref.kind == "adaptor":
        return f"rerun `grappa adapt --k {ref.name.split(':k')[1]} --force`"
    return f"rerun `grappa fuse --strategy {ref.name.split(':', 1)[1]} --force`"


def resolve_models(project: Project, names: list[str] | None,
                   store: Store) -> tuple[list[ModelRef], list[SkippedModel]]:
    """The models to evaluate: ``--model`` values, or every model the project has.

    Models whose provenance is stale are skipped (listed in the second value) when taken by
    default, and refused when named.
    """
    available = models_mod.available(project)
    by_name = {r.name: r for r in available}
    if names:
        refs = []
        for name in names:
            ref = models_mod.parse(name)
            if ref.name not in by_name:
                raise StoreError(
                    f"no model {ref.name!r} in this project{did_you_mean(ref.name, by_name)}; "
                    f"available: {', '.join(by_name)}",
                    hint="train it first (`grappa adapt --k K` or `grappa fuse --strategy S`)")
            if ref not in refs:
                refs.append(ref)
    else:
        refs = list(available)
    chosen: list[ModelRef] = []
    skipped: list[SkippedModel] = []
    for ref in refs:
        stale = _stale_inputs(project, ref, store)
        if not stale:
            chosen.append(ref)
            continue
        reason = f"{ref.name} is stale: {', '.join(stale)} changed since it was trained"
        if names:
            raise StoreError(reason, hint=_fix_for(ref))
        skipped.append(SkippedModel(ref.name, reason, _fix_for(ref)))
    return chosen, skipped


def _stale_inputs(project: Project, ref: ModelRef, store: Store) -> list[str]:
    rec = models_mod.record(project, ref)
    return artifacts.stale_inputs(project, rec, store) if rec else []


def uses_labels(project: Project, ref: ModelRef) -> bool:
    """Whether the model was trained with class labels (``fused:supervised``)."""
    if ref.kind != "fused":
        return False
    rec = models_mod.record(project, ref) or {}
    if "uses_labels" in rec:
        return bool(rec["uses_labels"])
    from grappa_cli import plugins

    strategy = plugins.registry("fusion_strategies").items.get(ref.name.split(":", 1)[1])
    return bool(getattr(strategy, "uses_labels", False))


def metric_names(config: GrappaConfig) -> list[str]:
    """MAP@R, R-Precision, every other installed plain metric plugin, then Recall@k for ``eval.recall_at``.

    Parameterised families (``name@k``) other than Recall@k are not evaluated by default:
    they need a k, which only ``eval.recall_at`` gives for Recall@k.
    """
    from grappa_cli.plugins import registry
    from grappa_cli.retrieval.metrics import DEFAULT_METRICS

    reg = registry("metrics")
    plain = [n for n in reg.names() if not hasattr(reg.get(n), "at") and n not in DEFAULT_METRICS]
    recalls = [f"recall@{int(k)}" for k in sorted(set(config.eval.recall_at))]
    return [*DEFAULT_METRICS, *plain, *recalls]


# -- the plan ------------------------------------------------------------------------------


@dataclass
class _Job:
    """One (model, task): where its embeddings come from and whether anything is to do."""

    ref: ModelRef
    task: str
    source: str  # store key of the embeddings
    embed: EmbedJob | None  # the model embeds into eval/...; None: reusing features/test
    embed_state: str  # state of the source group: complete | partial | missing | stale
    result_params: dict[str, Any]  # the result's recorded params (JSON; ``metrics`` is a list of names)
    result_inputs: dict[str, str]
    result_current: bool
    uses_labels: bool
    #: test rows left out of the queries and the gallery (duplicates of training images, ``drop``)
    left_out: list[int] = field(default_factory=list)

    @property
    def needs_embedding(self) -> bool:
        return self.embed is not None and self.embed_state != "complete"


def _plan(project: Project, config: GrappaConfig, store: Store, backbone: Backbone, refs: list[ModelRef],
          tasks: list[str], metrics: list[str], force: bool) -> list[_Job]:
    from grappa_cli.data import sources
    from grappa_cli.pipeline.stages import duplicates
    from grappa_cli.pipeline.stages.embed import EmbedJob
    from grappa_cli.pipeline.stages.extract import backbone_params, test_key

    bparams = backbone_params(backbone, config)
    tests = {task: sources.test_set(config, task) for task in tasks}
    left_out = {task: duplicates.rows_to_leave_out(store, config, task) for task in tasks}
    image_fps = {task: tests[task].fingerprint() for task in tasks}
    jobs: list[_Job] = []
    for ref in refs:
        model_fp = artifacts.fingerprint(project, ref.artifact, store) if ref.artifact else None
        # resolve_models keeps only available models whose inputs are current: every file they are
        # built from exists and is complete, so the fingerprint and the weights digest are strings
        model = ({ref.artifact: cast(str, model_fp),
                  models_mod.WEIGHTS: cast(str, models_mod.weights_digest(project, ref))}
                 if ref.artifact else {})
        labels = uses_labels(project, ref)
        for task in tasks:
            test = tests[task]
            images = {"images": image_fps[task]}
            embed = None
            source = test_key(task)
            if ref.kind == "backbone" and store.state(source, bparams, images) == "complete":
                state = "complete"
            else:
                source = eval_key(ref, task)
                params = {**bparams, "model": ref.name}
                inputs = images | model
                embed = EmbedJob(source, "eval", test.paths, test.labels, params, inputs,
                                 f"{task} test split with {ref.name}")
                state = store.state(source, params, inputs)
                if force:
                    state = "stale"
            if embed is not None:
                source_fp = prov.fingerprint({"params": embed.params, "inputs": embed.inputs})
            else:
                stored = store.provenance(source)
                assert stored is not None  # the backbone's features are complete: they have a record
                source_fp = stored["fingerprint"]
            result_params: dict[str, object] = {"model": ref.name, "task": task, "metrics": metrics,
                                                "protocol": PROTOCOL}
            result_params.update(duplicates.left_out_params(left_out[task]))  # [data] on_duplicates = "drop"
            result_inputs = {source: source_fp} | model
            current = False
            if not force and state == "complete":
                rec = artifacts.record(project, result_id(ref, task), store)
                current = artifacts.judge(rec, result_params, dict(result_inputs)).state == "complete"
            jobs.append(_Job(ref, task, source, embed, state, result_params, result_inputs, current, labels,
                             left_out[task]))
    return jobs


# -- running -------------------------------------------------------------------------------


def evaluate(project: Project, options: EvalOptions, reporter: Reporter | None = None) -> EvalRun:
    """Embed and score every requested (model, task); skip what is current (see module docstring)."""
    from grappa_cli.data.images import decode_min_side
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.pipeline.stages import eval_images
    from grappa_cli.pipeline.stages.embed import run_embedding
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.runtime import Precision, resolve_device, return_freed_memory
    from grappa_cli.train import distributed

    reporter = reporter or NullReporter()
    config = project.config()
    distributed.init_distributed()
    main = distributed.is_main()
    store = project.store()
    backbone = build_backbone(backbone_spec(config))
    plan: tuple[list[str], list[str], list[_Job], list[SkippedModel]] | None = None
    if main:
        tasks = resolve_tasks(config, options.tasks)
        refs, skipped = resolve_models(project, options.models, store)
        from grappa_cli.pipeline.stages import duplicates

        duplicates.check_tasks(store, config, tasks, reporter)
        jobs = _plan(project, config, store, backbone, refs, tasks, metric_names(config), options.force)
        plan = (tasks, [r.name for r in refs], jobs, skipped)
    # Rank 0 alone reads the store's state, before anyone writes; the others follow its plan.
    planned = distributed.broadcast_object(plan)
    assert planned is not None  # rank 0 always plans
    tasks, model_names, jobs, skipped = planned
    run = EvalRun(tasks, model_names, skipped_models=skipped)

    device = resolve_device(options.device or config.runtime.device)
    transform = eval_transform(backbone.data_config)
    metric_device = "cpu" if device.type == "cpu" else None
    split = eval_images.split_transform(transform)  # None: each model decodes the images itself
    caches: dict[tuple[str, ...], eval_images.PixelCache] = {}
    for name in model_names:
        mine = [j for j in jobs if j.ref.name == name]
        embedding = [j for j in mine if j.needs_embedding]
        seconds: dict[str, float] = {}
        if embedding:
            model = models_mod.load(project, embedding[0].ref, backbone)
            if split is not None and distributed.world_size() == 1:
                seconds.update(_embed_from_pixel_caches(store, embedding, model, caches, split, backbone, config,
                                                        options, device, reporter))
                embedding = []
            for job in embedding:
                start = time.perf_counter()
                assert job.embed is not None  # needs_embedding
                run_embedding(
                    store, job.embed, model, transform, dim=backbone.embed_dim, dtype=config.data.feature_dtype,
                    chunk_rows=config.data.chunk_size, batch_size=options.batch_size or config.eval.batch_size,
                    num_workers=config.data.num_workers if options.num_workers is None else options.num_workers,
                    device=device, amp=Precision.of(config.runtime), min_side=decode_min_side(backbone.data_config),
                    force=job.embed_state == "stale", reporter=reporter,
                    compile=config.runtime.compile or None,
                )
                seconds[job.task] = time.perf_counter() - start
            del model
        if main:
            for job in mine:
                run.entries.append(_score(project, store, job, config, metric_device, reporter,
                                          embedded=job.task in seconds, seconds=seconds.get(job.task, 0.0)))
        return_freed_memory()  # the next model starts from this one's live memory, not from its peak
    distributed.barrier()
    if main:
        run.oracle = oracle([e.stored() for e in run.entries])
    return run


def _embed_from_pixel_caches(store: Store, jobs: list[_Job], model: GrappaModel,
                             caches: dict[tuple[str, ...], eval_images.PixelCache], split: eval_images.SplitTransform,
                             backbone: Backbone, config: GrappaConfig, options: EvalOptions, device: torch.device,
                             reporter: Reporter) -> dict[str, float]:
    """Embed ``jobs`` (one model) from the pixel caches of their images; seconds per task.

    Each distinct image list is decoded once per run (and cached in the store for later
    runs); the model embeds each list's images once, whatever the number of tasks over them.
    """
    from grappa_cli.data.images import decode_min_side
    from grappa_cli.pipeline.stages import eval_images
    from grappa_cli.runtime import Precision

    by_images: dict[tuple[str, ...], list[_Job]] = {}
    for job in jobs:
        assert job.embed is not None  # needs_embedding
        by_images.setdefault(tuple(sorted(set(job.embed.paths))), []).append(job)
    workers = config.data.num_workers if options.num_workers is None else options.num_workers
    seconds: dict[str, float] = {}
    for images, group in by_images.items():
        if images not in caches:
            caches[images] = eval_images.ensure_pixel_cache(
                store, list(images), split, size=tuple(backbone.data_config["input_size"][1:]),
                min_side=decode_min_side(backbone.data_config), num_workers=workers, reporter=reporter)
        spent = eval_images.embed_jobs_from_cache(
            store, caches[images], group, model, dim=backbone.embed_dim, dtype=config.data.feature_dtype,
            chunk_rows=config.data.chunk_size, batch_size=options.batch_size or config.eval.batch_size,
            device=device, amp=Precision.of(config.runtime), compile=config.runtime.compile or None,
            reporter=reporter,
            label=f" with {group[0].ref.name} ({', '.join(j.task for j in group)})")
        for job in group:
            seconds[job.task] = spent / len(group)
    return seconds


def _score(project: Project, store: Store, job: _Job, config: GrappaConfig, device: str | None, reporter: Reporter,
           *, embedded: bool, seconds: float) -> EvalEntry:
    """Read the stored result when current, else compute the metrics and write it."""
    path = artifacts.result_path(project, result_id(job.ref, job.task))
    if job.result_current and not embedded:
        stored = read_result(path)
        return EvalEntry(job.ref.name, job.task, stored.metrics, stored.num_queries, stored.num_skipped,
                         stored.images, stored.unreadable, stored.uses_labels, stored.embeddings, str(path),
                         computed=False, embedded=False)
    from grappa_cli.pipeline.stages.embed import read_embeddings
    from grappa_cli.retrieval.metrics import retrieval_metrics
    from grappa_cli.storage.fsutil import atomic_write_text

    start = time.perf_counter()
    store.require_complete(job.source, f"the embeddings {job.source}", "grappa eval")
    embeddings, rows = read_embeddings(store, job.source)
    total = int(store.array(f"{job.source}/valid").shape[0])
    unreadable = total - len(rows)
    if job.left_out:
        import numpy as np

        kept = ~np.isin(rows, np.asarray(job.left_out, dtype=rows.dtype))
        embeddings, rows = embeddings[kept], rows[kept]
    labels = store.read(f"{job.source}/labels")[rows]
    with reporter.task(f"metrics of {job.ref.name} on {job.task}", total=None):
        try:
            values = retrieval_metrics(embeddings, labels, recall_at=(), metrics=job.result_params["metrics"],
                                       device=device)
        except DataError as exc:
            raise DataError(f"task {job.task}: {exc.message}", hint=exc.hint) from None
    num_queries = int(values.pop("num_queries"))
    num_skipped = int(values.pop("num_skipped"))
    record = prov.record("eval", job.result_params, job.result_inputs)
    record.update(complete=True, completed=prov.now(),
                  summary={title: f"{100 * float(values[m]):.1f}%" for m, title in TABLE_METRICS if m in values})
    metrics = {k: float(v) for k, v in values.items()}
    document = {
        "model": job.ref.name, "task": job.task, "metrics": metrics,
        "num_queries": num_queries, "num_skipped": num_skipped, "images": len(rows), "unreadable": unreadable,
        "left_out_duplicates": len(job.left_out),
        "uses_labels": job.uses_labels, "embeddings": job.source, "provenance": record,
        # how long embedding the test images took this time (the rate `grappa status` estimates from)
        "embedded": embedded, "seconds": round(seconds, 3),
    }
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return EvalEntry(job.ref.name, job.task, metrics, num_queries, num_skipped, len(rows),
                     unreadable, job.uses_labels, job.source, str(path), computed=True, embedded=embedded,
                     seconds=seconds + time.perf_counter() - start)
