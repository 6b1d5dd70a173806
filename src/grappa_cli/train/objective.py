"""What the training loop optimises: one module whose forward maps a batch to a loss.

The loop wraps this single module in ``DistributedDataParallel`` and checkpoints its
trainable state, so everything that learns must live inside it: the model's trainable
layers *and* the loss's own parameters (the norm-softmax classifier, the Barlow Twins
projector). :class:`Objective` bundles a model, a criterion and the function that combines
them; any other ``nn.Module`` whose ``forward(batch)`` returns a scalar works as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Objective", "load_trainable_state", "trainable_state"]

LossFn = Callable[[nn.Module, nn.Module, Any], Tensor]


def _supervised(model: nn.Module, criterion: nn.Module, batch: Any) -> Tensor:
    inputs, targets = batch
    return criterion(model(inputs), targets)


class Objective(nn.Module):
    """``forward(batch) = compute_loss(model, criterion, batch)``.

    The default ``compute_loss`` reads ``batch = (inputs, targets)`` and returns
    ``criterion(model(inputs), targets)`` (adaptor training with pseudo-labels). For pairs
    pass e.g. ``lambda m, c, b: c(m(b[0]), m(b[1]))`` (Barlow Twins).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, compute_loss: LossFn | None = None) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.compute_loss = compute_loss or _supervised

    def forward(self, batch: Any) -> Tensor:
        return self.compute_loss(self.model, self.criterion, batch)


def trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """The part of ``module.state_dict()`` that training changes: parameters with
    ``requires_grad`` and every buffer (e.g. batch-norm running statistics), detached."""
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in module.named_buffers()}
    return {k: v.detach() for k, v in module.state_dict().items() if k in trainable or k in buffers}


def load_trainable_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy a :func:`trainable_state` back into ``module`` in place (keys must match exactly)."""
    current = trainable_state(module)
    missing, unexpected = sorted(set(current) - set(state)), sorted(set(state) - set(current))
    if missing or unexpected:
        raise KeyError(f"trainable state does not match the module (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name, tensor in current.items():
            tensor.copy_(state[name])
