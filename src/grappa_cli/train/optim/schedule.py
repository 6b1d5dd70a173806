"""Per-step learning-rate schedules whose state survives a checkpoint exactly.

A schedule is a multiplier of each parameter group's base learning rate, evaluated at
the global step (optimizer steps since the start of training). It is wrapped in
``torch.optim.lr_scheduler.LambdaLR``: the multiplier is a small object with plain
float/int attributes, so ``LambdaLR.state_dict()`` records it and a resumed run continues
on the same curve.

Barlow Twins' ``adjust_learning_rate``: linear warm-up from 0 over the warm-up steps,
then a half cosine from the base rate down to ``final_fraction`` (0.001) of it.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from grappa_cli.errors import TrainingError

__all__ = ["SCHEDULES", "LrMultiplier", "build_scheduler"]

#: Names accepted by :func:`build_scheduler`.
SCHEDULES = ("constant", "cosine")


class LrMultiplier:
    """``step -> factor`` of the base learning rate: optional linear warm-up, then constant or cosine.

    * warm-up (``step < warmup_steps``): ``step / warmup_steps`` (0 at the first step, as
      in Barlow Twins);
    * ``constant``: 1;
    * ``cosine``: ``q + final_fraction * (1 - q)`` with ``q = (1 + cos(pi * t)) / 2`` and
      ``t`` the progress through the steps after the warm-up, clamped to [0, 1] (steps past
      ``total_steps`` stay at ``final_fraction``).
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.001):
        if kind not in SCHEDULES:
            raise TrainingError(f"unknown learning-rate schedule {kind!r}",
                                hint=f"choose one of {', '.join(SCHEDULES)}")
        if total_steps < 1 or warmup_steps < 0 or not 0.0 <= final_fraction <= 1.0:
            raise TrainingError(f"bad schedule: total_steps={total_steps}, warmup_steps={warmup_steps}, "
                                f"final_fraction={final_fraction}")
        self.kind = kind
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_fraction = float(final_fraction)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        t = min(max((step - self.warmup_steps) / decay_steps, 0.0), 1.0)
        q = 0.5 * (1.0 + math.cos(math.pi * t))
        return q + self.final_fraction * (1.0 - q)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    *,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0.0,
    final_fraction: float = 0.001,
) -> LambdaLR:
    """A per-step ``LambdaLR`` over ``epochs * steps_per_epoch`` steps (call ``.step()`` after each
    optimizer step). ``warmup_epochs`` may be fractional; it is rounded to whole steps."""
    total = int(steps_per_epoch) * int(epochs)
    warmup = round(float(warmup_epochs) * int(steps_per_epoch))
    return LambdaLR(optimizer, LrMultiplier(kind, total, warmup, final_fraction))


def fit_to_size(n: int, batch_size: int, epochs: int, min_steps: int, *, min_batch: int = 32,
                batch_fraction: int = 16, max_epoch_factor: int = 3) -> tuple[int, int]:
    """``(batch, epochs)`` that train a set of ``n`` items for at least ``min_steps`` optimizer steps.

    The paper's recipes (batch 256, a few epochs) were made for 133k images, where an epoch
    is 520 steps. On a few thousand images the same recipe is a dozen steps: the adaptors and
    the fusion barely leave their start. So the batch is at most ``n / batch_fraction`` (but
    at least ``min_batch``, and never above ``batch_size`` or ``n``), and the epochs are raised
    until the run has ``min_steps`` steps, but to at most ``max_epoch_factor`` times ``epochs``
    (a handful of images would otherwise be seen hundreds of times). On large sets neither
    changes anything.
    """
    if n < 1:
        raise ValueError("fit_to_size needs at least one item")
    batch = max(1, min(batch_size, max(min_batch, n // batch_fraction), n))
    steps_per_epoch = max(1, n // batch)
    wanted = math.ceil(min_steps / steps_per_epoch)
    return batch, max(int(epochs), min(wanted, max_epoch_factor * int(epochs)))
