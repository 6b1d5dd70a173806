"""``grappa extract``: features of the frozen backbone M for the training set and test splits.

The training set is the union of the configured tasks' train splits with labels dropped
(the paper's D, section 4.1); each evaluation task's test split is extracted with its labels.
Features are ``z = LN(h^L)[class]`` of the frozen backbone, stored un-normalised (retrieval
and clustering L2-normalise them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from grappa_cli.console import Reporter
from grappa_cli.pipeline.stages.embed import EmbedJob, EmbedResult, run_embedding
from grappa_cli.project import Project
from grappa_cli.records import artifacts
from grappa_cli.runtime import precision_params

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.data.tasks.base import ImageList
    from grappa_cli.model.backbones.backbone import Backbone, BackboneSpec
    from grappa_cli.storage.store import Store

TRAIN_KEY = artifacts.FEATURES_TRAIN
test_key = artifacts.test_features


@dataclass
class ExtractOptions:
    splits: tuple[str, ...] = ("train", "test")
    tasks: list[str] | None = None
    device: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    weights: str | None = None
    force: bool = False
    #: redo stale splits instead of refusing them (``grappa run``)
    refresh: bool = False
    #: hash every image's bytes and redo splits whose images changed (``--verify``)
    verify: bool = False
    #: extract a grown training set from scratch instead of appending the new images (``run --full``)
    full: bool = False


def backbone_spec(config: GrappaConfig, weights: str | None = None) -> BackboneSpec:
    """The configured backbone, with ``--weights`` overriding ``backbone.weights``."""
    import dataclasses
    from pathlib import Path

    from grappa_cli.model.backbones.backbone import BackboneSpec

    spec = BackboneSpec.from_config(config)
    if weights:
        spec = dataclasses.replace(spec, weights=Path(weights).expanduser().resolve(), pretrained=True)
    return spec


def backbone_params(backbone: Backbone, config: GrappaConfig) -> dict[str, object]:
    """What determines a backbone feature: the weights and the preprocessing."""
    return {
        "backbone": backbone.model_id,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
        "dtype": config.data.feature_dtype,
        "chunk_size": config.data.chunk_size,
        **precision_params(config.runtime),  # bf16 on the CPU changes the features
    }


def extract(project: Project, options: ExtractOptions, reporter: Reporter | None = None) -> list[EmbedResult]:
    """Run (or resume) extraction of every requested split; returns one result per split."""
    from grappa_cli.data import sources
    from grappa_cli.data.images import decode_min_side
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.runtime import Precision, resolve_device
    from grappa_cli.train import distributed

    config = project.config()
    distributed.init_distributed()
    backbone = build_backbone(backbone_spec(config, options.weights))
    device = resolve_device(options.device or config.runtime.device)
    transform = eval_transform(backbone.data_config)
    params = backbone_params(backbone, config)
    store = project.store()

    jobs: list[tuple[EmbedJob, str | None]] = []
    if "train" in options.splits:
        train = sources.training_set(config)
        inputs, content = image_inputs(store, TRAIN_KEY, train, options.verify)
        job = EmbedJob(TRAIN_KEY, "extract", train.paths, None, params, inputs, "training set")
        plan_increments(store, config, job, full=options.full or options.force)
        jobs.append((job, content))
    if "test" in options.splits:
        for task in options.tasks or sources.evaluation_tasks(config):
            test = sources.test_set(config, task)
            inputs, content = image_inputs(store, test_key(task), test, options.verify)
            jobs.append((EmbedJob(test_key(task), "extract", test.paths, test.labels, params, inputs,
                                  f"{task} test split"), content))
    results = []
    for job, content in jobs:
        changed = "content" in job.inputs and (store.provenance(job.key) or {}).get("inputs", {}).get(
            "content") != job.inputs["content"]
        results.append(run_embedding(
            store, job, backbone, transform, dim=backbone.embed_dim, dtype=config.data.feature_dtype,
            chunk_rows=config.data.chunk_size, batch_size=options.batch_size or config.data.batch_size,
            num_workers=config.data.num_workers if options.num_workers is None else options.num_workers,
            device=device, amp=Precision.of(config.runtime), min_side=decode_min_side(backbone.data_config),
            force=options.force, refresh=options.refresh or changed, reporter=reporter,
            compile=config.runtime.compile or None,
        ))
        if content is not None and distributed.rank() == 0:
            store.update(job.key, content=content)
    if distributed.rank() == 0:
        from grappa_cli.pipeline.stages import duplicates

        duplicates.check_tasks(store, config, sources.evaluation_tasks(config), reporter)
    return results


def plan_increments(store: Store, config: GrappaConfig, job: EmbedJob, *, full: bool) -> None:
    """Set ``job`` to append to the stored training features when ``data.train`` only grew.

    The rows the store holds are kept (``job.keep_rows``) when :func:`increments.growth` says
    the new image list starts with them, unchanged, and ``[data] update`` is ``incremental``;
    the completed record lists the increments (see :mod:`grappa_cli.records.increments`).
    """
    from grappa_cli.records import increments
    from grappa_cli.records import provenance as prov

    def prefix_fingerprint(n: int) -> str | None:
        if "content" in job.inputs:  # a content hash cannot be recomputed for a prefix: extract anew
            return None
        return increments.prefix_fingerprint(job.params, job.paths, n)

    record = store.provenance(job.key)
    grow = not full and config.data.update == "incremental"
    kept = increments.growth(record, job.paths, job.params, prefix_fingerprint) if grow else None
    parts = training_part_names(config)
    if kept:
        job.keep_rows = kept
        planned = increments.layout(record, len(job.paths), parts, "incremental")
    else:
        planned = [increments.Increment(0, 0, len(job.paths), parts)]
    planned[-1].fingerprint = prov.fingerprint({"params": job.params, "inputs": job.inputs})
    job.record_extra["increments"] = [inc.to_dict() for inc in planned]


def training_part_names(config: GrappaConfig) -> list[str]:
    """The entries of ``data.train`` as they form D (``"mrt"`` expanded to its six tasks)."""
    from grappa_cli.data import sources

    return [name for name, _ in sources.training_parts(config)]


def image_inputs(store: Store, key: str, images: ImageList, verify: bool) -> tuple[dict[str, str], str | None]:
    """The ``inputs`` of a features group, and the content hash to record (``--verify`` only).

    ``images`` is the fingerprint of paths, sizes and mtimes. ``--verify`` hashes the bytes
    too: when they differ from the hash recorded last time, the hash joins the inputs, so
    the split is redone and everything made from it becomes stale. Later runs without
    ``--verify`` carry that hash over while the stat fingerprint is unchanged.
    """
    inputs = {"images": images.fingerprint()}
    record = store.provenance(key) or {}
    old = record.get("inputs") or {}
    same_files = old.get("images") == inputs["images"]
    if not verify:
        if same_files and "content" in old:
            inputs["content"] = old["content"]
        return inputs, None
    content = images.content_fingerprint()
    known = old.get("content", record.get("content"))
    if "content" in old or (known is not None and known != content) or not same_files:
        inputs["content"] = content
    return inputs, content
