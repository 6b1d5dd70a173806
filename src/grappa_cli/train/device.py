"""Where training runs and in which precision."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from grappa_cli.errors import TrainingError
from grappa_cli.train.distributed import local_rank

__all__ = ["autocast", "move_to", "resolve_device"]


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` = CUDA when available (this process's ``LOCAL_RANK`` GPU under torchrun), else CPU.

    ``cuda`` means the ``LOCAL_RANK`` GPU; ``cuda:N`` and ``cpu`` are taken literally.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"device {spec!r} was requested but CUDA is not available",
                                hint='set [runtime] device = "cpu" (or "auto")')
        if spec == "cuda":
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        return torch.device(spec)
    raise TrainingError(f"unknown device {spec!r}", hint='use "auto", "cpu", "cuda" or "cuda:N"')


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``enabled``; nothing on the CPU (CPU runs stay exact and repeatable)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def move_to(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor inside tuples, lists and dicts moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to(v, device, non_blocking) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device, non_blocking) for v in batch)
    return batch
