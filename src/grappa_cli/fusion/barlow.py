"""Barlow Twins training of a fused model on pairs (Grappa-T, Grappa-N and the random baselines).

The loss (eq. 4) is computed on the projector outputs ``g(z_i), g(z_j)`` of the model's image
representations for the two images of a pair; the projector is discarded after training.
The fusion layers are optimised with Adam without weight decay (``[fuse] optimizer = "adam"``,
the default) or with the paper's LARS (learning rate 0.5, weight decay 0.001, section 4), a
linear warm-up and a cosine decay. Under LARS the gradients of Q and K (zero while the logit
scales are zero, then 1e-6 to 1e-2) are smaller than the weight decay's pull, and its steps are
0.05 % of the weights' norm (``eta = 0.001``), so Q and K shrink at the same rate in every layer
and the attention stays where it started; Adam's steps follow the gradient's sign and size
per weight, so Q, K and the scales move where the loss asks; the random baselines train their adaptors too, with
Adam and the adaptor recipe (the paper tuned those baselines but does not give the values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from grappa_cli.fusion.attention_stats import AttentionLogger
from grappa_cli.fusion.base import FusionContext

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    from torch import nn
    from torch.utils.data import Dataset

    from grappa_cli.config import GrappaConfig
    from grappa_cli.data.cache_dataset import CachedImageDataset
    from grappa_cli.data.training import ImagePairs
    from grappa_cli.model.grappa import GrappaModel
    from grappa_cli.train.loop import TrainResult
    from grappa_cli.train.objective import Objective


def barlow_params(config: GrappaConfig) -> dict[str, object]:
    """The settings of Barlow Twins pair training that determine its result.

    ``balance`` is recorded only when it is on, so fusions trained without it keep their
    fingerprints (and are not retrained) after the option appeared.
    """
    f = config.fuse
    params: dict[str, object] = {
        "lr": f.lr, "weight_decay": f.weight_decay, "warmup_epochs": f.warmup_epochs, "lambd": f.lambd,
        "loss_scale": f.loss_scale, "projector": list(f.projector), "optimizer": f.optimizer,
        "attention_init": f.attention_init}
    if f.optimizer == "adam":
        params["adam_lr"] = f.adam_lr
        params["scale_lr"] = f.scale_lr
    if f.balance > 0:
        params["balance"] = f.balance
    return params


def train_pairs(
    context: FusionContext, model: GrappaModel, dataset: ImagePairs | CachedImageDataset, *,
    optimizer: str | None = None,
    on_epoch_start: Callable[[int, Objective], Dataset[object] | None] | None = None, description: str = "fuse",
    loop_inputs: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters with the Barlow Twins loss on ``dataset``'s pairs.

    ``optimizer``: None for the fusion's configured optimizer (``[fuse] optimizer``: LARS as in the
    paper, or Adam without weight decay on Q, K and the logit scales), ``"adam"`` for the random
    baselines (adaptors and fusion together, with the adaptor recipe's rate and weight decay).

    ``loop_inputs`` are extra arguments of the training loop for datasets that are not pairs
    of image tensors yet (``prepare_batch``, ``make_batch_sampler``, ``collate_fn``: the
    image cache's uint8 batches turned into the two views on the device).
    """
    import torch

    from grappa_cli.errors import TrainingError
    from grappa_cli.fusion.balance import pair_loss
    from grappa_cli.train import distributed
    from grappa_cli.train.loop import TrainConfig, train
    from grappa_cli.train.objective import Objective
    from grappa_cli.train.optim.lars import LARS, param_groups
    from grappa_cli.train.optim.losses import BarlowTwinsLoss
    from grappa_cli.train.optim.schedule import build_scheduler

    p = context.params
    per_rank = context.batch_size // max(distributed.world_size(), 1)
    if per_rank < 2:
        raise TrainingError(f"a batch of {context.batch_size} pairs leaves {per_rank} per process, too few for "
                            "Barlow Twins batch statistics", hint="use --batch-size of at least 2 per process")
    torch.manual_seed(context.seed)
    criterion = BarlowTwinsLoss(context.backbone.embed_dim, p["projector"], lambd=p["lambd"],
                                scale_loss=p["loss_scale"])
    objective = Objective(model, criterion, pair_loss(float(p.get("balance", 0.0))))

    def make_optimizer(params: list) -> torch.optim.Optimizer:
        if optimizer == "adam":
            return torch.optim.Adam(param_groups(params, p["weight_decay"]), lr=p["lr"])
        if p["optimizer"] == "adam":  # no weight decay: it, not the loss, set Q and K under LARS
            groups = param_groups(params, 0.0)  # Q and K first, then the 1-D logit scales
            for group in groups:
                group["lr"] = p["adam_lr"] if group["params"][0].ndim > 1 else p["scale_lr"]
            return torch.optim.Adam(groups, lr=p["adam_lr"])
        return LARS(param_groups(params, p["weight_decay"]), lr=p["lr"], weight_decay=p["weight_decay"])

    config = TrainConfig(
        run_dir=context.run_dir, epochs=context.epochs, batch_size=min(context.batch_size, len(dataset)),
        seed=context.seed, device=context.device(), amp=context.config.runtime.amp,
        cpu_amp=context.config.runtime.cpu_amp,
        num_workers=context.num_workers(), images_per_item=2, description=description,
        force=context.options.force, restart_on_mismatch=context.options.refresh,
        settings={"params": p, "sets": context.set_names},
    )
    logger = AttentionLogger(context.run_dir, context.train_paths, context.backbone.data_config,
                             context.set_names)

    def epoch_start(epoch: int, objective: nn.Module) -> Dataset[object] | None:
        logger.on_epoch_start(epoch, objective)
        # the loop hands back the module it trains: the Objective built above
        return on_epoch_start(epoch, cast("Objective", objective)) if on_epoch_start else None

    return train(
        objective, dataset, config, make_optimizer=make_optimizer,
        make_scheduler=lambda opt, steps, epochs: build_scheduler(
            opt, "cosine", steps_per_epoch=steps, epochs=epochs, warmup_epochs=p["warmup_epochs"]),
        on_epoch_start=epoch_start, on_epoch_end=logger.on_epoch_end, reporter=context.reporter,
        **(loop_inputs or {}),
    )
