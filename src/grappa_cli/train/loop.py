"""The training loop shared by adaptor training (section 3.4) and fusion training (section 3.5).

:func:`train` optimises the trainable parameters of one :class:`~grappa_cli.train.objective.Objective`
(any module mapping a batch to a scalar loss; frozen parts stay untouched) over a dataset:

* placement on ``auto``/``cpu``/``cuda`` devices, bf16 autocast on CUDA, optional
  gradient-norm clipping, ``DistributedDataParallel`` under torchrun;
* a DataLoader it builds itself (seeded per-epoch shuffle shared by all ranks, ``drop_last``,
  ``spawn`` workers) from the dataset, which ``on_epoch_start`` may replace for one epoch
  (fusion training rebuilds its k-NN pairs every epoch); ``make_batch_sampler`` replaces the
  per-item shuffle by the dataset's own batch order (the image cache reads whole shards);
* ``prepare_batch(batch, device, generator)``, applied to every batch once it is on the
  device and before the forward pass: batched augmentation on the GPU when there is one,
  with a CPU generator seeded from ``(seed, epoch, rank)``, so augmentations are the same on
  every device and replay exactly on resume;
* after every epoch an atomic checkpoint in the run directory; rerunning with the same
  run directory resumes after the last complete epoch and ends, on the CPU, with weights
  identical to an uninterrupted run (every random generator is reseeded from
  ``(seed, epoch, rank)`` at the start of each epoch); other settings are refused;
* progress through a :class:`~grappa_cli.console.Reporter` and a ``metrics.jsonl`` log
  (rank 0 only), mirrored into TensorBoard event files in the run directory when tensorboard
  is installed (:mod:`grappa_cli.train.tensorboard_log`); a non-finite loss stops the run with
  :class:`TrainingError` and leaves the last good checkpoint as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from grappa_cli.console import NullReporter, Reporter
from grappa_cli.errors import TrainingError
from grappa_cli.records.provenance import fingerprint
from grappa_cli.runtime import resolve_device
from grappa_cli.train import distributed as dist_utils
from grappa_cli.train import tensorboard_log
from grappa_cli.train.checkpoint import RunDir
from grappa_cli.train.config import TrainConfig
from grappa_cli.train.data import (
    BatchSamplerFactory,
    EpochShuffleSampler,
    SeededSamples,
    dataset_length,
    make_batch_loader,
    make_loader,
)
from grappa_cli.train.epoch import Progress, run_epoch
from grappa_cli.train.objective import load_trainable_state, trainable_state
from grappa_cli.train.rng import capture_rng_state, derive_seed, restore_rng_state, seed_everything

__all__ = ["TrainConfig", "TrainResult", "train"]

#: Part of every run fingerprint; bump when the loop's arithmetic changes.
LOOP_VERSION = 1

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int, int], LRScheduler]
EpochStart = Callable[[int, nn.Module], "Dataset | None"]
EpochEnd = Callable[[int, nn.Module, Mapping[str, object]], None]
ItemT = TypeVar("ItemT")  # what the dataset yields
BatchT = TypeVar("BatchT")  # what the loader yields: ``collate_fn``'s result
#: ``prepare_batch(batch, device, generator)``: a loader batch on ``device`` -> what the objective takes.
BatchPreparer = Callable[[BatchT, torch.device, torch.Generator], object]

#: Mixed into the seed of the generator handed to ``prepare_batch``.
_PREPARE_STREAM = 0xBA7C
_ITEM_STREAM = 0x17E5


@dataclass
class TrainResult:
    """What a finished run returns (also when it was already complete and nothing ran)."""

    state_dict: dict[str, Tensor]
    epoch_losses: list[float]
    steps: int
    seconds: float
    images_per_second: float
    start_epoch: int
    run_dir: Path

    def submodule_state(self, prefix: str) -> dict[str, Tensor]:
        """Entries under ``prefix.`` with the prefix removed (e.g. ``"model"`` of an Objective)."""
        head = prefix.rstrip(".") + "."
        return {k[len(head):]: v for k, v in self.state_dict.items() if k.startswith(head)}


def _fingerprint_settings(config: TrainConfig, objective: nn.Module, dataset_size: int) -> dict[str, object]:
    shapes = {name: list(p.shape) for name, p in objective.named_parameters() if p.requires_grad}
    return {"loop_version": LOOP_VERSION, "epochs": config.epochs, "batch_size": config.batch_size,
            "seed": config.seed, "amp": config.amp, "grad_clip": config.grad_clip,
            "dataset_size": dataset_size, "trainable": shapes,
            **({"cpu_amp": True} if config.cpu_amp else {}), **config.settings}


def _check_batches(config: TrainConfig, size: int) -> int:
    world = dist_utils.world_size()
    if config.epochs < 1:
        raise TrainingError(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < world or config.batch_size % world:
        raise TrainingError(f"batch size {config.batch_size} cannot be split evenly over {world} processes",
                            hint=f"use a multiple of {world}")
    steps = size // config.batch_size
    if steps == 0:
        raise TrainingError(f"the training set has {size} items, fewer than one batch of {config.batch_size}",
                            hint=f"lower the batch size to at most {max(size, 1)}")
    return steps


def _prepare_run_dir(run: RunDir, config: TrainConfig, settings: Mapping[str, object]) -> None:
    restart = config.force or (config.restart_on_mismatch and not run.settings_match(settings))
    if restart and dist_utils.is_main():
        run.clear()
    dist_utils.barrier()
    run.check_settings(settings)
    dist_utils.barrier()
    if dist_utils.is_main() and not run.settings_path.exists():
        run.write_settings(settings)
    dist_utils.barrier()


def train(
    objective: nn.Module,
    dataset: Dataset[ItemT],
    config: TrainConfig,
    *,
    make_optimizer: OptimizerFactory,
    make_scheduler: SchedulerFactory | None = None,
    on_epoch_start: EpochStart | None = None,
    on_epoch_end: EpochEnd | None = None,
    collate_fn: Callable[[list[ItemT]], BatchT] | None = None,
    prepare_batch: BatchPreparer[BatchT] | None = None,
    make_batch_sampler: BatchSamplerFactory | None = None,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train ``objective``'s trainable parameters; resume from ``config.run_dir`` when possible.

    ``make_optimizer(params)`` builds the optimizer over the trainable parameters;
    ``make_scheduler(optimizer, steps_per_epoch, epochs)`` an optional per-step scheduler.
    ``on_epoch_start(epoch, objective)`` runs on every rank before each epoch (after the
    epoch's reseeding) and may return a dataset to use for that epoch instead of ``dataset``
    (``steps_per_epoch`` is still computed from ``dataset``); a dataset with a ``set_epoch``
    method is told the epoch before its loader is built. ``on_epoch_end(epoch, objective,
    record)`` runs after the epoch's checkpoint is written.

    ``make_batch_sampler(dataset, batch_size=, seed=, rank=, world_size=)`` builds the
    epoch's batches instead of the seeded per-item shuffle (``batch_size`` per rank, full
    batches only). ``prepare_batch(batch, device, generator)`` maps each batch, once on
    ``device``, to what the objective takes; it runs without gradients and outside autocast,
    and ``generator`` is a CPU generator seeded from ``(seed, epoch, rank)``.
    """
    reporter = reporter if (reporter is not None and dist_utils.is_main()) else NullReporter()
    device = resolve_device(config.device)
    objective.to(device)
    params = [p for p in objective.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters",
                            hint="unfreeze the layers to train (requires_grad=True) before training")
    steps_per_epoch = _check_batches(config, dataset_length(dataset))
    settings = _fingerprint_settings(config, objective, dataset_length(dataset))
    run = RunDir(config.run_dir)
    _prepare_run_dir(run, config, settings)

    optimizer = make_optimizer(params)
    scheduler = make_scheduler(optimizer, steps_per_epoch, config.epochs) if make_scheduler else None
    progress: Progress = {"epoch": 0, "step": 0, "losses": [], "seconds": 0.0, "images": 0}
    state = run.load_checkpoint()
    if state is not None:
        if state.get("fingerprint") != fingerprint(settings):
            raise TrainingError(f"the checkpoint in {run.path} was made with other settings",
                                hint=f"pass --force to start over, or delete {run.path}")
        load_trainable_state(objective, {k: v.to(device) for k, v in state["model"].items()})
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        progress.update({"epoch": int(state["epoch"]), "step": int(state["global_step"]),
                         "losses": [float(x) for x in state["epoch_losses"]],
                         "seconds": float(state["seconds"]), "images": int(state["images"])})
        if progress["epoch"] < config.epochs:
            reporter.log(f"Resuming {config.description} from {run.path} after epoch "
                         f"{progress['epoch']}/{config.epochs}")
        else:
            reporter.log(f"{config.description} is already complete in {run.path}")
    start_epoch = progress["epoch"]
    if dist_utils.is_main():
        run.truncate_metrics(start_epoch)

    wrapped = _wrap_ddp(objective, device)
    rank = dist_utils.rank()
    # TensorBoard mirrors the metrics log (rank 0, only when there is something to train)
    with tensorboard_log.open_run(run.path, progress["step"], reporter,
                                  enabled=dist_utils.is_main() and start_epoch < config.epochs) as curves:
        for epoch in range(start_epoch, config.epochs):
            seed_everything(derive_seed(config.seed, epoch, rank))
            replacement = on_epoch_start(epoch, objective) if on_epoch_start else None
            epoch_data = dataset if replacement is None else replacement
            objective.train()
            loader = _epoch_loader(epoch_data, epoch, config, device, collate_fn, make_batch_sampler)
            if len(loader) == 0:
                raise TrainingError(f"epoch {epoch + 1} has {dataset_length(epoch_data)} items, fewer than one "
                                    f"batch of {config.batch_size}", hint="lower the batch size")
            record = run_epoch(wrapped, loader, epoch, config, optimizer, scheduler, params, device, progress,
                               run, reporter, prepare=_epoch_preparer(prepare_batch, device, config.seed, epoch, rank))
            if dist_utils.is_main():
                run.append_metrics(record)  # first: a record past the checkpoint is dropped on resume
                run.save_checkpoint({
                    "fingerprint": fingerprint(settings), "epoch": epoch + 1,
                    "global_step": progress["step"], "epoch_losses": list(progress["losses"]),
                    "seconds": progress["seconds"], "images": progress["images"],
                    "model": {k: v.cpu() for k, v in trainable_state(objective).items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "rng": capture_rng_state(),
                })
            dist_utils.barrier()
            if on_epoch_end:
                on_epoch_end(epoch, objective, record)
            curves.flush()

    seconds = progress["seconds"]
    return TrainResult(
        state_dict={k: v.detach().cpu().clone() for k, v in trainable_state(objective).items()},
        epoch_losses=list(progress["losses"]), steps=progress["step"], seconds=seconds,
        images_per_second=progress["images"] / seconds if seconds > 0 else math.nan,
        start_epoch=start_epoch, run_dir=run.path,
    )


def _epoch_loader(
    data: Dataset[ItemT], epoch: int, config: TrainConfig, device: torch.device,
    collate_fn: Callable[[list[ItemT]], object] | None, make_batch_sampler: BatchSamplerFactory | None,
) -> DataLoader[ItemT]:
    """This rank's DataLoader for ``epoch``: the seeded shuffle, or the dataset's own batch order."""
    rank, world = dist_utils.rank(), dist_utils.world_size()
    set_epoch = getattr(data, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)  # before the loader pickles the dataset for its workers
    pin_memory = device.type == "cuda"
    worker_seed = derive_seed(config.seed, epoch, rank, 0x0A7A)
    items = SeededSamples(data, derive_seed(config.seed, epoch, _ITEM_STREAM))  # same for any worker count
    if make_batch_sampler is None:
        sampler = EpochShuffleSampler(dataset_length(data), config.batch_size, seed=config.seed, rank=rank,
                                      world_size=world)
        sampler.set_epoch(epoch)
        return make_loader(items, sampler, num_workers=config.num_workers, collate_fn=collate_fn,
                           pin_memory=pin_memory, worker_seed=worker_seed)
    batches = make_batch_sampler(data, batch_size=config.batch_size // world, seed=config.seed, rank=rank,
                                 world_size=world)
    batches.set_epoch(epoch)
    return make_batch_loader(items, batches, num_workers=config.num_workers, collate_fn=collate_fn,
                             pin_memory=pin_memory, worker_seed=worker_seed)


def _epoch_preparer(
    prepare_batch: BatchPreparer[BatchT] | None, device: torch.device, seed: int, epoch: int, rank: int,
) -> Callable[[BatchT], object] | None:
    """``prepare_batch`` bound to the device and to this epoch's freshly seeded CPU generator."""
    if prepare_batch is None:
        return None
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, rank, _PREPARE_STREAM))

    def prepare(batch: BatchT) -> object:
        return prepare_batch(batch, device, generator)

    return prepare


def _wrap_ddp(objective: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``objective`` with several processes, else itself."""
    if not dist_utils.is_distributed():
        return objective
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(objective)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(objective, device_ids=[index], output_device=index)

