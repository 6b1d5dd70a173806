"""torch.distributed helpers for runs under ``torchrun`` (and no-ops without it).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed`
reads them and joins the process group (NCCL when CUDA is present, gloo otherwise, so the
distributed path runs and is tested on the CPU). Every helper here degrades to the
single-process answer when no process group exists, so code written against them runs
unchanged under plain ``python`` and under ``torchrun``.
"""

from __future__ import annotations

import os
from typing import TypeVar, cast

import torch
import torch.distributed as dist

T = TypeVar("T")

__all__ = [
    "all_gather_concat",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup",
    "init_distributed",
    "is_distributed",
    "is_main",
    "local_rank",
    "rank",
    "shard_range",
    "world_size",
]


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes; return whether one is active.

    A no-op (returns False) outside torchrun or with ``WORLD_SIZE=1``, and when a group
    already exists (returns True). ``backend`` defaults to NCCL with CUDA, gloo without;
    with NCCL the process also selects GPU ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if _env_int("WORLD_SIZE", 1) <= 1 or not dist.is_available():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def _current_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _current_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    return _current_world_size()


def rank() -> int:
    """This process's global rank (0 without a group)."""
    return _current_rank()


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 outside torchrun): its GPU index."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on rank 0, the only process that reports progress and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op without a group)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over processes, as a new tensor (a copy without a group)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every process (in-memory pickling between our own processes)."""
    if not is_distributed():
        return obj
    holder = [obj if rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return cast("T", holder[0])  # filled with rank src's object by the broadcast


def all_gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order; sizes may differ.

    With :func:`shard_range` shards this rebuilds the full array in index order (how
    feature extraction or a k-NN refresh reassembles per-rank results). With NCCL the
    tensor must be on this process's GPU.
    """
    if not is_distributed():
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0)


def shard_range(n: int, *, rank: int | None = None, world_size: int | None = None, align: int = 1) -> range:
    """This rank's contiguous share of ``range(n)``: disjoint across ranks, union = everything.

    Shards start at multiples of ``align`` (for example a store's chunk size, so that each
    rank writes whole chunks) and differ in length by at most one ``align`` block. Ranks
    beyond the number of blocks get an empty range.
    """
    r = _current_rank() if rank is None else rank
    w = _current_world_size() if world_size is None else world_size
    if n < 0 or align < 1 or w < 1 or not 0 <= r < w:
        raise ValueError(f"bad shard request: n={n}, rank={r}, world_size={w}, align={align}")
    blocks = -(-n // align)
    first, last = r * blocks // w, (r + 1) * blocks // w
    return range(min(first * align, n), min(last * align, n))


def cleanup() -> None:
    """Leave the process group if this process is in one.

    Objects still holding the group go first (a DDP wrapper in a reference cycle would otherwise
    release its reducer at interpreter exit, after the group is gone), then every rank waits for
    the others. Without this, a gloo rank could abort at exit after finishing its work
    ("terminate called without an active exception"): 5 of 10 two-process torchrun runs of the
    toy training on a loaded 2-core machine; with it, none of 24.
    """
    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()  # DDP wrappers left in reference cycles release their reducers while the group lives
        barrier()
        dist.destroy_process_group()
