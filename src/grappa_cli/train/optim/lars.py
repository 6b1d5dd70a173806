"""LARS (You et al. 2018) exactly as the Barlow Twins reference implements it.

Fusion training uses LARS with lr 0.5 and weight decay 0.001 (section 4 of the paper),
"as suggested in" Barlow Twins. Its reference optimizer, for each parameter p with
gradient g:

    d  = g + wd * p                      (weight decay, skipped for 1-D params)
    d  = d * eta * ||p|| / ||d||         (layer-wise adaptation, skipped for 1-D params;
                                          factor 1 when ||p|| or ||d|| is 0)
    mu = momentum * mu + d ;  p -= lr * mu

1-D parameters (biases, norm scales/shifts) are excluded from both weight decay and the
adaptation (the reference's ``exclude_bias_and_norm``).

Why not ``timm.optim.Lars``: its trust ratio is ``eta * ||p|| / (||g|| + wd * ||p||)``, an
upper bound of the reference's denominator ``||g + wd * p||`` (so its steps are shorter
whenever g and p are not aligned), it adapts a group only when that group's weight decay
is non-zero (or ``always_adapt``), and it has no per-parameter 1-D rule. Twenty lines
reproduce the reference exactly and keep the state (``mu`` buffers) a plain tensor dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import nn
from torch.optim.optimizer import ParamsT

__all__ = ["LARS", "param_groups"]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum, Barlow Twins' variant.

    ``exclude_1d`` (per group, default True) applies the reference's rule: parameters with
    ``ndim <= 1`` get neither weight decay nor adaptation, only SGD with momentum.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
        exclude_1d: bool = True,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(f"invalid LARS settings: lr={lr}, weight_decay={weight_decay}, "
                             f"momentum={momentum}, eta={eta}")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta,
                    "exclude_1d": exclude_1d}
        super().__init__(params, defaults)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                excluded = group["exclude_1d"] and p.ndim <= 1
                d = p.grad
                if not excluded:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm = torch.linalg.vector_norm(p)
                    d_norm = torch.linalg.vector_norm(d)
                    one = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0, torch.where(d_norm > 0, group["eta"] * p_norm / d_norm, one), one)
                    d = d.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss


def param_groups(params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into multi-dimensional weights and 1-D biases/norm params.

    Returns ``[{"params": weights, "weight_decay": wd}, {"params": biases_and_norms,
    "weight_decay": 0.0}]`` (an empty group is left out), ready for any torch optimizer:
    with Adam/AdamW it keeps weight decay off biases and norm parameters; LARS already
    excludes 1-D parameters itself. Frozen parameters (``requires_grad=False``) are dropped.
    """
    items = params.parameters() if isinstance(params, nn.Module) else params
    weights: list[nn.Parameter] = []
    flat: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in items:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (flat if p.ndim <= 1 else weights).append(p)
    groups = []
    if weights:
        groups.append({"params": weights, "weight_decay": float(weight_decay)})
    if flat:
        groups.append({"params": flat, "weight_decay": 0.0})
    return groups
