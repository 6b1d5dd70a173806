"""Frozen convolutions and batch norms that keep for the backward pass only what it needs.

Autograd's convolution node keeps its input whether or not the weight needs a gradient (one
formula gives the gradients of input, weight and bias together), and batch norm keeps its input
too. grappa's backbone is frozen: training an adaptor set or a fusion asks these layers only for
the gradient with respect to their input, which needs the weights and the running statistics,
not the input. On the demo's Grappa-N training (64 pairs at 96 px through EfficientNet-Lite0 and
three adaptor sets) the tensors saved for the backward pass fall from 851 to 420 MiB per step.

The gradient is computed by the very kernel autograd calls (``aten.convolution_backward``,
``aten.native_batch_norm_backward``), with the same arguments and only the input's gradient
asked for, given an uninitialised stand-in with the input's shape and strides: those kernels
read the input's values only for the weight's gradient, so the result is bit-identical
(``tests/model/test_frozen_layers.py`` compares them). Only CPU tensors take this path: on a GPU,
cuDNN's batch norm has another backward, and the equality is not checked there.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["keep_less_for_backward"]


def _wanted(x: torch.Tensor, *constants: torch.Tensor | None) -> bool:
    """Whether the input alone needs a gradient, on the CPU, with autograd recording."""
    return (x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled()
            and not any(t is not None and t.requires_grad for t in constants))


class _FrozenConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
                groups: int) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_layout = (x.shape, x.stride(), x.dtype)
        ctx.conv = (None if bias is None else list(bias.shape), list(stride), list(padding), list(dilation), groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        shape, strides, dtype = ctx.input_layout
        bias_sizes, stride, padding, dilation, groups = ctx.conv
        stand_in = torch.empty_strided(shape, strides, dtype=dtype, device=grad.device)
        grad_input, _, _ = torch.ops.aten.convolution_backward(
            grad, stand_in, weight, bias_sizes, stride, padding, dilation, False, [0] * len(stride), groups,
            [True, False, False])
        return grad_input, None, None, None, None, None, None


class _FrozenBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        ctx.save_for_backward(weight, mean, var)
        ctx.input_layout = (x.shape, x.stride(), x.dtype)
        ctx.eps = eps
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, mean, var = ctx.saved_tensors
        shape, strides, dtype = ctx.input_layout
        stand_in = torch.empty_strided(shape, strides, dtype=dtype, device=grad.device)
        no_stats = torch.empty(0, dtype=dtype, device=grad.device)  # eval mode saves no batch statistics
        grad_input, _, _ = torch.ops.aten.native_batch_norm_backward(
            grad, stand_in, weight, mean, var, no_stats, no_stats, False, ctx.eps, [True, False, False])
        return grad_input, None, None, None, None, None


def _conv_forward(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if _wanted(x, weight, bias):
        return _FrozenConv2d.apply(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
    return nn.Conv2d._conv_forward(self, x, weight, bias)


def _batch_norm(module: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor | None:
    """The frozen path of an eval-mode batch norm, or None where the module's own code must run."""
    if module.training or module.running_mean is None or module.running_var is None:
        return None
    if not _wanted(x, module.weight, module.bias):
        return None
    return _FrozenBatchNorm.apply(x, module.running_mean, module.running_var, module.weight, module.bias, module.eps)


def _bn_forward(self: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    out = _batch_norm(self, x)
    return type(self).forward(self, x) if out is None else out


def _bn_act_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    out = _batch_norm(self, x)
    if out is None:
        return type(self).forward(self, x)
    return self.act(self.drop(out))  # timm's BatchNormAct2d: batch norm, then drop, then act


def keep_less_for_backward(model: nn.Module) -> int:
    """Give the frozen ``Conv2d`` and batch-norm modules of ``model`` the lean backward; how many.

    Only the exact classes whose forward is known are changed (``nn.Conv2d`` with zero padding
    given as numbers, ``nn.BatchNorm2d`` and timm's ``BatchNormAct2d``); subclasses with their
    own forward (``Conv2dSame``, frozen or synchronised norms) keep theirs. The change is per
    instance, and a module whose parameters need a gradient takes the usual path at every call.
    """
    from timm.layers import BatchNormAct2d

    changed = 0
    for module in model.modules():
        kind = type(module)
        if kind is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            vars(module)["_conv_forward"] = types.MethodType(_conv_forward, module)  # this instance only
        elif kind is nn.BatchNorm2d:
            vars(module)["forward"] = types.MethodType(_bn_forward, module)
        elif kind is BatchNormAct2d:
            vars(module)["forward"] = types.MethodType(_bn_act_forward, module)
        else:
            continue
        changed += 1
    return changed
