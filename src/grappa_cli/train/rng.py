"""Random-number state: per-epoch seeding and capture/restore for checkpoints.

Training reseeds every generator at the start of each epoch from ``(seed, epoch, rank)``,
so data order, augmentations, dropout and DataLoader worker seeds of an epoch depend on
nothing that happened before it: a run resumed from a checkpoint replays later epochs
exactly. The full generator states are also stored in checkpoints (as tensors and
numbers only, loadable with ``torch.load(weights_only=True)``) and restored on resume.
"""

from __future__ import annotations

import random
from typing import NotRequired, TypedDict, cast

import numpy as np
import torch

__all__ = ["capture_rng_state", "derive_seed", "restore_rng_state", "seed_everything"]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence; stable across versions)."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class RngState(TypedDict):
    """What :func:`capture_rng_state` captures: every global generator's state."""

    python_version: int
    python_state: torch.Tensor
    python_gauss: float
    python_has_gauss: bool
    numpy_keys: torch.Tensor
    numpy_pos: int
    numpy_has_gauss: int
    numpy_gauss: float
    torch: torch.Tensor
    cuda: NotRequired[list[torch.Tensor]]


def capture_rng_state() -> RngState:
    """Every global generator's state as tensors and plain numbers."""
    version, words, gauss = random.getstate()
    # the legacy tuple (numpy's stubs say a dict): the global generator is an MT19937
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state: RngState = {
        "python_version": int(version),
        "python_state": torch.tensor(words, dtype=torch.int64),
        "python_gauss": -1.0 if gauss is None else float(gauss),
        "python_has_gauss": gauss is not None,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: RngState) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only where devices exist)."""
    gauss = state["python_gauss"] if state["python_has_gauss"] else None
    random.setstate((state["python_version"], tuple(int(w) for w in state["python_state"].tolist()), gauss))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
