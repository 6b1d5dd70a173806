"""Where computation runs: device selection and mixed precision."""

from __future__ import annotations

import contextlib
from typing import Any

from grappa_cli.errors import GrappaError


def resolve_device(name: str = "auto") -> Any:
    """``auto`` -> CUDA when available (the local rank's GPU under torchrun), else CPU."""
    import os

    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GrappaError(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GrappaError("--device cuda was asked for but no CUDA device is available",
                          hint="use --device cpu or auto")
    return device


def autocast(device: Any, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA; a no-op context on the CPU (float32 stays exact there)."""
    import torch

    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
