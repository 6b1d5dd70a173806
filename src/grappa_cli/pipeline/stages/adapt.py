"""``grappa adapt``: one adaptor set per pseudo-label set P_i (Step 2, section 3.4).

For each k, a fresh set of L adaptors (one per backbone layer, up-projections at zero) is
trained on the frozen backbone to classify the images into their k-means cluster with the
norm-softmax loss (eq. 2: cosine classifier, scale gamma), Adam with learning rate and
weight decay 0.001 (section 4). The classifier is discarded; the set is saved to
``checkpoints/adaptors/k<K>.safetensors`` with its provenance. Each set trains
independently and resumes after an interruption (``checkpoints/runs/adapt-k<K>/``).

Images come from the image cache when it holds the current training set (uint8 squares
augmented in whole batches on the training device, see :mod:`grappa_cli.data.cached_training`);
under ``[data] cache = "auto"`` (the default) the first set to train on a GPU builds it
(:func:`grappa_cli.pipeline.stages.cache.training_cache`). Otherwise images come from the
image files (decoded and augmented by PIL in the DataLoader workers, with a hint that the cache
speeds training up). The provenance
records which (``input``: ``cache`` or ``files``); it is not part of the fingerprint, so
building the cache never makes trained sets stale.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from grappa_cli.console import NullReporter, Reporter
from grappa_cli.errors import StoreError
from grappa_cli.pipeline.stages.cluster import cluster_key, training_labels
from grappa_cli.project import Project
from grappa_cli.records import artifacts
from grappa_cli.records import provenance as prov
from grappa_cli.runtime import precision_params

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.model.backbones.backbone import Backbone
    from grappa_cli.storage.store import Store

FEATURES = artifacts.FEATURES_TRAIN


@dataclass
class AdaptOptions:
    ks: list[int] | None = None
    #: set names (``k256``, ``k16-coral``); with ``ks``, the first increment's ``k<K>`` are added
    sets: list[str] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    device: str | None = None
    seed: int | None = None
    num_workers: int | None = None
    force: bool = False
    #: retrain stale sets instead of refusing them, and restart runs left with other settings (``grappa run``)
    refresh: bool = False


@dataclass
class AdaptResult:
    k: int
    path: str
    skipped: bool
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    name: str = ""


def adaptor_id(k: int | str) -> str:
    """``adaptors/k256`` for a k or a set name (``adaptors/k16-coral``)."""
    return f"adaptors/{k}" if isinstance(k, str) else f"adaptors/k{k}"


def stored_set_names(store: Store) -> list[str]:
    """Names of the sets whose clustering is complete in the store (first increment's first, by k)."""
    from grappa_cli.records import increments

    names = []
    for name in store.children("clusters"):
        if increments.is_set_name(name):
            record = store.provenance(f"clusters/{name}") or {}
            if record.get("complete"):
                names.append(name)
    return sorted(names, key=increments.set_sort_key)


def adapt_params(config: GrappaConfig, options: AdaptOptions, k: int, backbone_id: str) -> dict[str, object]:
    a = config.adapt
    return {
        "k": k, "backbone": backbone_id, "bottleneck": a.bottleneck,
        "epochs": options.epochs or a.epochs, "batch_size": options.batch_size or a.batch_size,
        "min_steps": a.min_steps, "lr": a.lr, "weight_decay": a.weight_decay, "schedule": a.schedule,
        "scale": a.scale,
        "grad_clip": a.grad_clip, "seed": config.runtime.seed if options.seed is None else options.seed,
        "optimizer": "adam", "augmentation": "random-resized-crop+flip", "crop_scale": a.crop_scale,
        "prototypes": a.prototypes, **precision_params(config.runtime),
    }


def initial_prototypes(store: Store, k: int | str, params: dict[str, Any], dim: int,
                       replayed: tuple[str, ...] | list[str] = ()) -> Any:
    """The norm-softmax prototypes' start: the clustering's L2-normalised centroids, or None (random).

    The untrained model (zero-output adaptors) embeds an image exactly as the backbone whose
    features were clustered, so with the centroids as prototypes training starts from the
    cosine classifier to the clusters that defined the pseudo-labels (it already assigns most
    images to their own cluster): the first steps refine the clusters instead of pulling every
    embedding towards a random direction. ``replayed``: clusterings whose classes follow k's
    (an added set's replay, :mod:`grappa_cli.pipeline.stages.replay`).
    """
    if params["prototypes"] != "centroids":
        return None
    import torch

    from grappa_cli.records import increments

    parts = []
    for key in [k, *replayed]:  # an added set's classes: its own clusters, then each replayed clustering's
        clusters = key if isinstance(key, int) else increments.parse_set(key)[0]
        centroids = np.asarray(store.read(f"{cluster_key(key)}/centroids"), dtype=np.float32)
        if centroids.shape != (clusters, dim):
            raise StoreError(f"{cluster_key(key)}/centroids has shape {centroids.shape}, "
                             f"expected ({clusters}, {dim})", hint="rerun `grappa cluster --force`")
        parts.append(centroids)
    centroids = np.concatenate(parts)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return torch.from_numpy(centroids / np.maximum(norms, 1e-12))


def adapt(project: Project, options: AdaptOptions, reporter: Reporter | None = None) -> list[AdaptResult]:
    """Train (or resume, or skip) the adaptor set of every requested k."""
    from grappa_cli.pipeline.freshness import require_current
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.train import distributed

    reporter = reporter or NullReporter()
    config = project.config()
    distributed.init_distributed()
    store = project.store()
    features = store.require_complete(FEATURES, "the training set's features", "grappa extract")
    available = stored_set_names(store)
    names = [*(f"k{k}" for k in options.ks or []), *(options.sets or [])] or available
    if not names:
        raise StoreError("no pseudo-label sets yet", hint="run `grappa cluster`")
    missing = [n for n in names if n not in available]
    if missing:
        raise StoreError(f"no complete clustering for {', '.join(missing)}; stored: "
                         f"{', '.join(available) or 'none'}",
                         hint=f"run `grappa cluster --k {','.join(m[1:] for m in missing)}` (or `grappa run`)")
    from grappa_cli.pipeline.stages import replay

    for name in names:  # never train on pseudo-labels of stale features, --force included
        what = f"the pseudo-labels at k={name[1:]}" if name[1:].isdigit() else f"the pseudo-labels of {name}"
        require_current(project, cluster_key(name), what)
        for source in replay.sources(config, store, name):  # the earlier images it replays
            require_current(project, cluster_key(source), f"the pseudo-labels of {source} ({name} replays them)")
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.pipeline.stages.cache import training_cache

    backbone = build_backbone(backbone_spec(config))
    if features["params"].get("backbone") != backbone.model_id:
        raise StoreError(f"the stored features were extracted with {features['params'].get('backbone')}, "
                         f"but grappa.toml configures {backbone.model_id}",
                         hint="rerun `grappa extract --force`")
    # looked up (and built, as [data] cache says) when the first set trains: a run whose sets are
    # all complete neither builds the cache nor says anything about it
    cache = functools.cache(lambda: training_cache(project, store, reporter, options.device or config.runtime.device))
    results = []
    for name in names:
        results.append(_adapt_one(project, config, options, store, backbone, features, name, reporter, cache))
    return results


def training_inputs(store: Store, k: int | str, data_config: dict[str, Any], cache: Any,
                    crop_scale: float = 0.08,
                    labelled: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Any, dict[str, Any]]:
    """The dataset of images with their pseudo-labels under clustering k, and the loop's extra inputs.

    With the image cache: cached uint8 images with their training rows, augmented on the
    training device, labels looked up by row. Without: image files decoded and augmented
    by PIL in the DataLoader workers. ``labelled``: (labels by row, rows to train on) instead
    of clustering k's (an added set with replayed rows, :mod:`grappa_cli.pipeline.stages.replay`).
    """
    labels, keep = labelled if labelled is not None else training_labels(store, k)
    if cache is not None:
        from grappa_cli.data.cached_training import LabelledViews, loop_inputs
        from grappa_cli.data.gpu_augment import TensorAugment

        rows = cache.usable_rows(keep)
        views = LabelledViews(TensorAugment.standard(data_config, scale=(float(crop_scale), 1.0)), labels)
        return cache.images(rows, return_index=True), loop_inputs(views)
    from grappa_cli.data.images import decode_min_side
    from grappa_cli.data.training import LabeledImages
    from grappa_cli.data.transforms import train_transform

    paths = store.read(f"{FEATURES}/paths")
    return LabeledImages([str(p) for p in paths[keep]], labels[keep], train_transform(data_config, crop_scale),
                         min_side=decode_min_side(data_config)), {}


def _adapt_one(project: Project, config: GrappaConfig, options: AdaptOptions, store: Store, backbone: Backbone,
               features: dict, name: str, reporter: Reporter,
               cache: Callable[[], Any] = lambda: None) -> AdaptResult:
    import torch

    from grappa_cli.model.checkpoint import save_adaptor_set
    from grappa_cli.model.grappa import GrappaModel, new_adaptor_set
    from grappa_cli.pipeline.stages import replay
    from grappa_cli.pipeline.stages.cluster import trained_on
    from grappa_cli.records import increments
    from grappa_cli.train import distributed
    from grappa_cli.train.loop import TrainConfig, train
    from grappa_cli.train.objective import Objective
    from grappa_cli.train.optim.losses import NormSoftmaxLoss
    from grappa_cli.train.optim.schedule import build_scheduler, fit_to_size

    k, _ = increments.parse_set(name)
    path = artifacts.checkpoint_path(project, adaptor_id(name))
    clustering = store.provenance(cluster_key(name)) or {}
    added = {key: clustering["params"][key] for key in ("increment", "rows") if key in clustering.get("params", {})}
    params = {**adapt_params(config, options, k, backbone.model_id), **added}
    # the features as the clustering saw them (an earlier increment's, when the set grew since)
    inputs = {cluster_key(name): clustering["fingerprint"],
              FEATURES: (clustering.get("inputs") or {}).get(FEATURES, features["fingerprint"])}
    replay_params, replayed = replay.plan(config, increments.configured(config, store), name)
    params.update(replay_params)
    if replayed:
        inputs.update({cluster_key(s): (store.provenance(cluster_key(s)) or {}).get("fingerprint")
                       for s in replayed})
    existing = artifacts.read_checkpoint_record(path)
    if existing and not options.force:
        if artifacts.judge(existing, params, inputs).state == "complete":
            return AdaptResult(k, str(path), True, existing.get("loss_curve", []), name=name)
        if not options.refresh:
            raise StoreError(f"{path.name} was trained with other inputs or settings "
                             f"({prov.describe_mismatch(existing, params, inputs)})",
                             hint="rerun with --force to retrain it")

    labels, keep, replayed_rows = replay.labelled_rows(store, name, replayed, params.get("replay", 0),
                                                       params["seed"])
    dataset, loop_inputs = training_inputs(store, name, backbone.data_config, cache(), params["crop_scale"],
                                           labelled=(labels, keep))
    model = GrappaModel.with_adaptor_sets(
        backbone, [new_adaptor_set(backbone, config.adapt.bottleneck, seed=params["seed"], k=k,
                                   config_path=config.path)], fusion=None)
    model.set_trainable(adaptors=True, fusion=False)
    torch.manual_seed(params["seed"])
    criterion = NormSoftmaxLoss(backbone.embed_dim, replay.classes(name, replayed), scale=params["scale"],
                                weight=initial_prototypes(store, name, params, backbone.embed_dim, replayed))
    objective = Objective(model, criterion)
    run_dir = project.runs_dir / f"adapt-{name}"
    batch_size, epochs = fit_to_size(len(dataset), params["batch_size"], params["epochs"], params["min_steps"])
    train_config = TrainConfig(
        run_dir=run_dir, epochs=epochs, batch_size=batch_size, seed=params["seed"],
        device=options.device or config.runtime.device, amp=config.runtime.amp, cpu_amp=config.runtime.cpu_amp,
        grad_clip=params["grad_clip"],
        num_workers=config.data.num_workers if options.num_workers is None else options.num_workers,
        description=f"adapt {name}", force=options.force, restart_on_mismatch=options.refresh,
        settings={"params": params, "inputs": inputs},
    )
    start = time.perf_counter()
    result = train(
        objective, dataset, train_config,
        make_optimizer=lambda p: torch.optim.Adam(p, lr=params["lr"], weight_decay=params["weight_decay"]),
        make_scheduler=lambda opt, steps, epochs: build_scheduler(
            opt, params["schedule"], steps_per_epoch=steps, epochs=epochs),
        reporter=reporter, **loop_inputs,
    )
    if distributed.is_main():
        record = prov.record("adapt", params, inputs)
        record.update(complete=True, completed=prov.now(), loss_curve=result.epoch_losses,
                      images=len(dataset), seconds=result.seconds, input="cache" if loop_inputs else "files",
                      batch_size=batch_size, epochs=epochs,
                      trained_on=clustering.get("trained_on") or trained_on(None, len(dataset)),
                      summary={"k": k, "epochs": epochs, "final_loss": _last(result.epoch_losses)})
        if replayed:  # the earlier images it also learned (stages.replay)
            record["trained_on"] = {**record["trained_on"],
                                    "replayed": {"clusterings": replayed, "images": replayed_rows}}
        save_adaptor_set(path, model.adaptor_set(0), backbone=backbone, provenance=record, k=k,
                         config={"adapt": params})
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # the set is saved; keep metrics.jsonl only
    distributed.barrier()
    return AdaptResult(k, str(path), False, result.epoch_losses, time.perf_counter() - start,
                       result.images_per_second, name)


def _last(values: list[float]) -> float | None:
    return round(values[-1], 4) if values else None
