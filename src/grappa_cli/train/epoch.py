"""One training epoch: forward, finite-loss check, backward, clipping, optimizer and scheduler steps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict, TypeVar, cast

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from grappa_cli.console import Reporter
from grappa_cli.errors import TrainingError
from grappa_cli.runtime import Precision, autocast
from grappa_cli.train import distributed as dist_utils
from grappa_cli.train.checkpoint import RunDir
from grappa_cli.train.config import TrainConfig

__all__ = ["Progress", "move_to", "run_epoch"]

BatchT = TypeVar("BatchT")


class Progress(TypedDict):
    """A run's totals so far, updated in place by every epoch."""

    epoch: int
    step: int
    losses: list[float]
    seconds: float
    images: int


def move_to(batch: BatchT, device: torch.device, non_blocking: bool = False) -> BatchT:
    """``batch`` with every tensor inside tuples, lists and dicts moved to ``device``.

    The structure is kept: tensors, tuples (named ones too) and lists come back as the same
    types; a mapping comes back as a dict.
    """
    return cast("BatchT", _moved(batch, device, non_blocking))


def _moved(batch: object, device: torch.device, non_blocking: bool) -> object:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: _moved(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        fields = cast("Callable[..., tuple[object, ...]]", type(batch))  # a namedtuple takes its fields one by one
        return fields(*(_moved(v, device, non_blocking) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(_moved(v, device, non_blocking) for v in batch)
    return batch


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def run_epoch(
    module: nn.Module,
    loader: Iterable[BatchT],
    epoch: int,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    params: list[nn.Parameter],
    device: torch.device,
    progress: Progress,
    run: RunDir,
    reporter: Reporter,
    prepare: Callable[[BatchT], object] | None = None,
) -> dict[str, object]:
    """Train for one pass over ``loader``; update ``progress`` (step, seconds, images, losses)
    in place and return the epoch's metrics record. ``prepare`` maps each batch once it is on
    ``device`` (without gradients, outside autocast). Raises :class:`TrainingError` on a
    non-finite loss before any parameter sees it."""
    steps = len(loader)  # type: ignore[arg-type]
    images_per_step = config.batch_size * config.images_per_item
    main = dist_utils.is_main()
    losses: list[float] = []
    started = time.perf_counter()
    logged_at, logged_steps = started, 0  # for the mean step time since the previous step record
    title = f"{config.description} epoch {epoch + 1}/{config.epochs}"
    with reporter.task(title, total=steps * images_per_step, unit="img") as task:
        for i, batch in enumerate(loader):
            batch = move_to(batch, device, non_blocking=device.type == "cuda")
            inputs: object = batch
            if prepare is not None:
                with torch.no_grad():
                    inputs = prepare(batch)
                del batch  # only the prepared batch stays alive through forward and backward
            with autocast(device, Precision(cuda=config.amp, cpu=config.cpu_amp)):
                loss = module(inputs)
            value = float(dist_utils.all_reduce_mean(loss.detach().float()).item())
            if not math.isfinite(value):
                _diverged(value, epoch, i, progress, run, main)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            lr = _current_lr(optimizer)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            progress["step"] += 1
            losses.append(value)
            elapsed = time.perf_counter() - started
            rate = (i + 1) * images_per_step / max(elapsed, 1e-9)
            task.advance(images_per_step)
            if (i + 1) % max(config.log_every, 1) == 0 or i + 1 == steps:
                task.update(step=f"{i + 1}/{steps}", loss=value, lr=lr)
                now = time.perf_counter()
                step_time = (now - logged_at) / (i + 1 - logged_steps)
                logged_at, logged_steps = now, i + 1
                if main:
                    run.append_metrics({"kind": "step", "epoch": epoch, "step": progress["step"],
                                        "loss": value, "lr": lr, "images_per_s": rate,
                                        "step_time_s": step_time, "time": time.time()})
    seconds = time.perf_counter() - started
    progress["seconds"] += seconds
    progress["images"] += len(losses) * images_per_step
    epoch_loss = sum(losses) / len(losses)
    progress["losses"].append(epoch_loss)
    return {"kind": "epoch", "epoch": epoch, "step": progress["step"], "loss": epoch_loss,
            "lr": _current_lr(optimizer), "images_per_s": len(losses) * images_per_step / max(seconds, 1e-9),
            "step_time_s": seconds / len(losses), "seconds": seconds, "time": time.time()}


def _diverged(value: float, epoch: int, index: int, progress: Progress, run: RunDir, main: bool) -> None:
    kind = "NaN" if math.isnan(value) else "infinite"
    done = len(progress["losses"])
    if main:
        run.append_metrics({"kind": "error", "epoch": epoch, "step": progress["step"] + 1,
                            "loss": str(value), "time": time.time()})
    kept = f"the checkpoint after epoch {done} is kept" if done else "no checkpoint was written"
    raise TrainingError(
        f"the loss became {kind} at epoch {epoch + 1}, step {index + 1} (global step {progress['step'] + 1}); "
        f"{kept} in {run.path}",
        hint=divergence_hint(run.path.name),
    )


def divergence_hint(run_name: str) -> str:
    """What to change after a NaN/inf loss, in settings the stage's own section accepts.

    Runs are named after their stage (``adapt-k<K>``, ``fuse-<strategy>``): ``[adapt]`` has
    ``grad_clip``, ``[fuse]`` has none but a warm-up.
    """
    if run_name.startswith("fuse-"):
        return "lower [fuse] lr or lengthen [fuse] warmup_epochs in grappa.toml, then rerun with --force"
    if run_name.startswith("adapt-"):
        return "lower [adapt] lr or set [adapt] grad_clip (e.g. 1.0) in grappa.toml, then rerun with --force"
    return "lower the learning rate or enable gradient clipping (grad_clip)"
