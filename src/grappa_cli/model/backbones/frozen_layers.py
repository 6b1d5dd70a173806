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
        # eval mode saves no batch statistics; the empty stand-ins take the statistics' dtype (float32 under
        # bf16 autocast, as native_batch_norm would save them), which the CPU kernel checks
        no_stats = torch.empty(0, dtype=mean.dtype, device=grad.device)
        grad_input, _, _ = torch.ops.aten.native_batch_norm_backward(
            grad, stand_in, weight, mean, var, no_stats, no_stats, False, ctx.eps, [True, False, False])
        return grad_input, None, None, None, None, None


class _LeanConvForward:
    """A frozen ``Conv2d``'s ``_conv_forward``: the lean path when only the input needs a gradient.

    A small object rather than a bound function, so that a changed module still pickles and
    deep-copies (each copy's method refers to the copy).
    """

    def __init__(self, module: nn.Conv2d) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        conv = self.module
        if _wanted(x, weight, bias):
            return _FrozenConv2d.apply(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return nn.Conv2d._conv_forward(conv, x, weight, bias)


class _LeanNormForward:
    """An eval-mode batch norm's ``forward`` (``nn.BatchNorm2d``, or timm's ``BatchNormAct2d``, which
    follows it with ``drop`` and ``act``): the lean path when only the input needs a gradient."""

    def __init__(self, module: nn.BatchNorm2d, then_act: bool) -> None:
        self.module = module
        self.then_act = then_act

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norm: Any = self.module
        if (norm.training or norm.running_mean is None or norm.running_var is None
                or not _wanted(x, norm.weight, norm.bias)):
            return type(norm).forward(norm, x)
        out = _FrozenBatchNorm.apply(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, norm.eps)
        return norm.act(norm.drop(out)) if self.then_act else out


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
        if isinstance(module, nn.Conv2d) and kind is nn.Conv2d and module.padding_mode == "zeros" \
                and not isinstance(module.padding, str):
            vars(module)["_conv_forward"] = _LeanConvForward(module)  # this instance only
        elif isinstance(module, nn.BatchNorm2d) and kind in (nn.BatchNorm2d, BatchNormAct2d):
            vars(module)["forward"] = _LeanNormForward(module, then_act=kind is BatchNormAct2d)
        else:
            continue
        changed += 1
    return changed
