"""The paper's fusion strategies and baselines (section 3.5, section 4.2, appendix C).

* ``avg``: Grappa-avg, the mean of the N sets; nothing to train.
* ``transform``: Grappa-T, attention fusion trained with Barlow Twins on two augmented views.
* ``neighbor``: Grappa-N, attention fusion trained with Barlow Twins on k-NN pairs in the
  feature space of the current M*, the graph recomputed every epoch (``fuse.graph = "model"``),
  or of the stored backbone features, built once (``"backbone"``, the paper's static k-NN).
* ``supervised``: appendix C's reference, attention fusion trained with the tasks' class
  labels (norm-softmax, Adam); it uses labels, and reports say so.
* ``random``: M*(random), N randomly initialised adaptor sets trained together with the
  attention fusion by the transform loss (Table 2, row 3).
* ``single-random``: M + A_1, one randomly initialised adaptor set trained by the transform
  loss (Table 2, row 2).

The strategies that train on the training images (transform, neighbor, random,
single-random) read them from the image cache when it is complete and current
(:meth:`FusionContext.training_cache`): uint8 batches in chunk-aware order, views made on the
training device; otherwise from the image files with PIL transforms in the workers.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from grappa_cli.fusion.barlow import barlow_params, train_pairs
from grappa_cli.fusion.base import FusionContext, FusionOptions, FusionOutcome
from grappa_cli.fusion.route import RouteFusion

if TYPE_CHECKING:  # annotations only: torch and the datasets are imported where they are used
    from grappa_cli.config import GrappaConfig
    from grappa_cli.data.cache_dataset import CachedImageDataset, CachedPairDataset
    from grappa_cli.data.training import ImagePairs
    from grappa_cli.model.grappa import GrappaModel
    from grappa_cli.train.loop import TrainResult
    from grappa_cli.train.objective import Objective


def _common(config: GrappaConfig, options: FusionOptions) -> dict[str, object]:
    f = config.fuse
    return {"epochs": options.epochs or f.epochs, "batch_size": options.batch_size or f.batch_size,
            "min_steps": f.min_steps, "seed": config.runtime.seed if options.seed is None else options.seed}


class AverageFusion:
    name = "avg"
    description = "Grappa-avg: mean of the adaptor sets (nothing to train)"
    uses_labels = False
    trains_adaptors = False

    def params(self, config: GrappaConfig, options: FusionOptions) -> dict[str, object]:
        return {"fusion": "mean"}

    def train(self, context: FusionContext) -> FusionOutcome:
        return FusionOutcome(context.model("mean"))


def _transform_dataset(context: FusionContext) -> ImagePairs:
    from grappa_cli.data.images import decode_min_side
    from grappa_cli.data.training import ImagePairs
    from grappa_cli.data.transforms import BarlowTwinsTransform

    views = BarlowTwinsTransform(context.backbone.data_config)
    n = len(context.train_paths)
    same = np.stack([np.arange(n), np.arange(n)], axis=1)
    return ImagePairs(context.train_paths, same, views.first, views.second,
                      min_side=decode_min_side(context.backbone.data_config))


def _transform_inputs(context: FusionContext) -> tuple[ImagePairs | CachedImageDataset, dict[str, Any]]:
    """Grappa-T's training data: the two Barlow Twins views of each training image.

    From the image cache when it exists (each cached image read once, both views made on the
    training device), else from the image files (PIL views in the DataLoader workers).
    """
    cache = context.training_cache()
    if cache is None:
        return _transform_dataset(context), {}
    from grappa_cli.data.cached_training import TwoViews, loop_inputs
    from grappa_cli.data.gpu_augment import TensorAugment
    from grappa_cli.data.transforms import BLUR_SIGMA_224

    data_config = context.backbone.data_config
    scale = int(data_config["input_size"][-1]) / 224  # blur in pixels scales with the input, as the PIL views
    sigma = (BLUR_SIGMA_224[0] * scale, BLUR_SIGMA_224[1] * scale)
    views = TwoViews(TensorAugment.barlow_twins(data_config, 1, blur_sigma=sigma),
                     TensorAugment.barlow_twins(data_config, 2, blur_sigma=sigma))
    return cache.images(context.cached_rows()), loop_inputs(views)


def _outcome(model: GrappaModel, result: TrainResult, start: float, trained_adaptors: bool = False,
             **info: object) -> FusionOutcome:
    return FusionOutcome(model, list(result.epoch_losses), time.perf_counter() - start,
                         result.images_per_second, trained_adaptors, info)


class TransformFusion:
    name = "transform"
    description = "Grappa-T: attention fusion, Barlow Twins on two augmented views of each image"
    uses_labels = False
    trains_adaptors = False

    def params(self, config: GrappaConfig, options: FusionOptions) -> dict[str, object]:
        return {"fusion": "attention", **_common(config, options), **barlow_params(config),
                "augmentation": "barlow-twins"}

    def train(self, context: FusionContext) -> FusionOutcome:
        start = time.perf_counter()
        model = context.model("attention")
        model.set_trainable(adaptors=False, fusion=True)
        dataset, inputs = _transform_inputs(context)
        result = train_pairs(context, model, dataset, description="fuse transform", loop_inputs=inputs)
        return _outcome(model, result, start)


class NeighborFusion:
    name = "neighbor"
    description = "Grappa-N: attention fusion, Barlow Twins on k-NN pairs of the current model"
    uses_labels = False
    trains_adaptors = False

    def params(self, config: GrappaConfig, options: FusionOptions) -> dict[str, object]:
        params = {"fusion": "attention", **_common(config, options), **barlow_params(config),
                  "neighbors": options.neighbors or config.fuse.neighbors,
                  "augmentation": "random-resized-crop+flip" if config.fuse.pair_augment else "none"}
        if config.fuse.graph != "model":  # recorded only when not the default: older fingerprints hold
            params["graph"] = config.fuse.graph
        return params

    def train(self, context: FusionContext) -> FusionOutcome:
        start = time.perf_counter()
        model = context.model("attention")
        model.set_trainable(adaptors=False, fusion=True)
        graphs: list[np.ndarray] = []
        if context.training_cache() is not None:
            result = self._train_cached(context, model, graphs)
        else:
            result = self._train_files(context, model, graphs)
        changed = [float((a != b).mean()) for a, b in itertools.pairwise(graphs)]
        return _outcome(model, result, start, graph_changes=changed)

    def _train_cached(self, context: FusionContext, model: GrappaModel, graphs: list[np.ndarray]) -> TrainResult:
        """Anchors and partners read from the image cache; embedding and augmentation on the device."""
        from grappa_cli.data.cached_training import CenterView, PairViews, PlainPairViews, loop_inputs
        from grappa_cli.data.gpu_augment import TensorAugment
        from grappa_cli.fusion.neighbors import embed_cached, knn_graph
        from grappa_cli.runtime import Precision, resolve_device
        from grappa_cli.train.rng import derive_seed

        cache = context.training_cache()
        assert cache is not None  # train() takes this path only when the cache exists
        rows = context.cached_rows()
        data_config = context.backbone.data_config
        k = int(context.params["neighbors"])
        device = resolve_device(context.device())
        view = CenterView.for_cache(data_config, cache.size)

        static = _backbone_graph(context, k, rows)

        def on_epoch_start(epoch: int, objective: Objective) -> CachedPairDataset:
            graph = static if static is not None else knn_graph(
                embed_cached(objective.model, cache, rows, view, batch_size=context.config.data.batch_size,
                             num_workers=context.num_workers(), device=device,
                             amp=Precision.of(context.config.runtime)), k)
            graphs.append(graph)
            partners = np.full((cache.layout.n, k), -1, dtype=np.int64)
            partners[rows] = rows[graph]  # graph positions -> training rows
            return cache.pairs(rows, partners, seed=derive_seed(context.seed, 0x6E6E))

        if context.params["augmentation"] == "none":
            inputs = loop_inputs(PlainPairViews(view))
        else:
            inputs = loop_inputs(PairViews(TensorAugment.standard(data_config)))
        return train_pairs(context, model, cache.images(rows), on_epoch_start=on_epoch_start,
                           description="fuse neighbor", loop_inputs=inputs)

    def _train_files(self, context: FusionContext, model: GrappaModel, graphs: list[np.ndarray]) -> TrainResult:
        """Anchors and partners decoded from the image files and augmented in the DataLoader workers."""
        from grappa_cli.data.images import decode_min_side
        from grappa_cli.data.training import ImagePairs
        from grappa_cli.data.transforms import eval_transform, train_transform
        from grappa_cli.fusion.neighbors import embed_paths, knn_graph, sample_pairs
        from grappa_cli.runtime import Precision, resolve_device
        from grappa_cli.train.rng import derive_seed

        data_config = context.backbone.data_config
        min_side = decode_min_side(data_config)
        k = int(context.params["neighbors"])
        device = resolve_device(context.device())
        plain = eval_transform(data_config)
        augment = plain if context.params["augmentation"] == "none" else train_transform(data_config)

        static = _backbone_graph(context, k)

        def on_epoch_start(epoch: int, objective: Objective) -> ImagePairs:
            graph = static if static is not None else knn_graph(
                embed_paths(objective.model, context.train_paths, plain, batch_size=context.config.data.batch_size,
                            num_workers=context.num_workers(), device=device, amp=Precision.of(context.config.runtime),
                            min_side=min_side), k)
            graphs.append(graph)
            pairs = sample_pairs(graph, np.random.default_rng(derive_seed(context.seed, epoch, 0, 0x6E6E)))
            return ImagePairs(context.train_paths, pairs, augment, augment, min_side=min_side)

        n = len(context.train_paths)
        placeholder = ImagePairs(context.train_paths, np.stack([np.arange(n)] * 2, axis=1), augment, augment)
        return train_pairs(context, model, placeholder, on_epoch_start=on_epoch_start, description="fuse neighbor")


def _backbone_graph(context: FusionContext, k: int, rows: np.ndarray | None = None) -> np.ndarray | None:
    """The static k-NN graph of the stored backbone features (``fuse.graph = "backbone"``).

    ``rows``: the training rows the pairs are drawn from, in order (default: every readable row,
    the order of ``context.train_paths``); graph entries are positions in ``rows``. None for the
    paper's default (``"model"``): the graph of the current M*, rebuilt every epoch.
    """
    if context.params.get("graph", "model") != "backbone":
        return None
    from grappa_cli.fusion.neighbors import knn_graph

    if rows is None:
        rows = np.flatnonzero(context.store.read("features/train/valid"))
    return knn_graph(np.asarray(context.store.read("features/train/embeddings"))[rows], k)


class RandomAdaptorsFusion:
    """M*(random): as many random adaptor sets as there are stored ones, trained with their fusion."""

    name = "random"
    description = "M*(random) baseline: random adaptor sets + attention fusion, transform loss"
    uses_labels = False
    trains_adaptors = True
    num_sets: int | None = None

    def params(self, config: GrappaConfig, options: FusionOptions) -> dict[str, object]:
        p = {"fusion": "attention", **_common(config, options), **barlow_params(config),
             "augmentation": "barlow-twins", "optimizer": "adam", "lr": config.adapt.lr,
             "weight_decay": config.adapt.weight_decay, "bottleneck": config.adapt.bottleneck}
        return p

    def _sets(self, context: FusionContext) -> int:
        return len(context.adaptor_sets)

    def train(self, context: FusionContext) -> FusionOutcome:
        import torch

        from grappa_cli.model.grappa import GrappaModel, new_adaptor_set

        start = time.perf_counter()
        n = self._sets(context)
        sets = [new_adaptor_set(context.backbone, int(context.params["bottleneck"]), seed=context.seed + i)
                for i in range(n)]
        torch.manual_seed(context.seed)
        model = GrappaModel.with_adaptor_sets(context.backbone, sets, fusion="attention" if n > 1 else None,
                                              attention_init=str(context.params["attention_init"]))
        model.set_trainable(adaptors=True, fusion=n > 1)
        dataset, inputs = _transform_inputs(context)
        result = train_pairs(context, model, dataset, optimizer="adam", description=f"fuse {self.name}",
                             loop_inputs=inputs)
        return _outcome(model, result, start, trained_adaptors=True)


class SingleRandomAdaptor(RandomAdaptorsFusion):
    name = "single-random"
    description = "M + A1 baseline: one random adaptor set trained with the transform loss"

    def params(self, config: GrappaConfig, options: FusionOptions) -> dict[str, object]:
        p = super().params(config, options)
        p["fusion"] = "none"
        return p

    def _sets(self, context: FusionContext) -> int:
        return 1


class SupervisedFusion:
    """Appendix C: fusion learned with class labels of the tasks' train splits (an upper bound)."""

    name = "supervised"
    description = "reference: attention fusion trained with class labels (norm-softmax, Adam); uses labels"
    uses_labels = True
    trains_adaptors = False

    def params(self, config: GrappaConfig, options: FusionOptions) -> dict[str, object]:
        return {"fusion": "attention", **_common(config, options), "lr": config.adapt.lr,
                "attention_init": config.fuse.attention_init,
                "weight_decay": config.adapt.weight_decay, "scale": config.adapt.scale, "optimizer": "adam",
                "augmentation": "random-resized-crop+flip", "labels": "task train splits"}

    def train(self, context: FusionContext) -> FusionOutcome:
        import torch

        from grappa_cli.data import sources
        from grappa_cli.data.images import decode_min_side
        from grappa_cli.data.training import LabeledImages
        from grappa_cli.data.transforms import train_transform
        from grappa_cli.train.loop import TrainConfig, train
        from grappa_cli.train.objective import Objective
        from grappa_cli.train.optim.lars import param_groups
        from grappa_cli.train.optim.losses import NormSoftmaxLoss

        start = time.perf_counter()
        labelled = sources.labelled_training_set(context.config)
        assert labelled.labels is not None  # labelled_training_set labels every image it returns
        model = context.model("attention")
        model.set_trainable(adaptors=False, fusion=True)
        p = context.params
        torch.manual_seed(context.seed)
        criterion = NormSoftmaxLoss(context.backbone.embed_dim, len(labelled.classes), scale=p["scale"])
        dataset = LabeledImages(labelled.paths, labelled.labels, train_transform(context.backbone.data_config),
                                min_side=decode_min_side(context.backbone.data_config))
        config = TrainConfig(
            run_dir=context.run_dir, epochs=context.epochs, batch_size=min(context.batch_size, len(dataset)),
            seed=context.seed, device=context.device(), amp=context.config.runtime.amp,
            cpu_amp=context.config.runtime.cpu_amp,
            num_workers=context.num_workers(), description="fuse supervised", force=context.options.force,
            restart_on_mismatch=context.options.refresh,
            settings={"params": p, "sets": context.set_names},
        )
        result = train(Objective(model, criterion), dataset, config,
                       make_optimizer=lambda ps: torch.optim.Adam(param_groups(ps, p["weight_decay"]), lr=p["lr"]),
                       reporter=context.reporter)
        return _outcome(model, result, start, classes=len(labelled.classes))


BUILTIN_STRATEGIES = (AverageFusion, TransformFusion, NeighborFusion, RouteFusion, SupervisedFusion,
                      RandomAdaptorsFusion, SingleRandomAdaptor)
