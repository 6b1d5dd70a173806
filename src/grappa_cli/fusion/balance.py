"""Keeping attention fusion from collapsing onto the coarsest adaptor set.

Barlow Twins on k-NN pairs (Grappa-N) is lowest where the two images of a pair already map
to the same output, and the coarsest pseudo-granularity makes that easiest: neighbours
nearly always share a coarse cluster. Left alone, the attention moves most of its weight
there (on the quality harness the last layer ends with ``alpha = 0.92`` on k = 16 for
every image), and the fine tasks lose what the fine sets learned.

The remedy is the load-balancing term of mixtures of experts: per layer, the KL divergence
from the uniform distribution to the *batch-mean* attention,

    balance = mean_l KL(u || mean_b alpha_bl) = mean_l ( -log N - (1/N) sum_i log mean_b alpha_bli ),

which is 0 when every set gets ``1/N`` of the batch on average and grows without bound as a
set is abandoned. It constrains only the average: each image may still put its weight on
the set that suits it (what attention is for), but the sets must share the batch. The
fusion loss becomes ``barlow_twins + fuse.balance * balance``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

#: keeps log() finite when a set's batch-mean weight underflows to zero
_FLOOR = 1e-8


def attention_balance(alpha: Tensor) -> Tensor:
    """``mean_l KL(uniform || mean_b alpha[:, l])`` for ``alpha [B, L, N]``; 0 for N = 1."""
    if alpha.dim() != 3:
        raise ValueError(f"attention weights must be [batch, layers, sets], got shape {tuple(alpha.shape)}")
    n = alpha.shape[-1]
    if n < 2:
        return alpha.new_zeros(())
    mean = alpha.float().mean(dim=0).clamp_min(_FLOOR)  # [L, N]
    return (-math.log(n) - mean.log().mean(dim=-1)).mean()


def pair_loss(weight: float) -> Callable[[torch.nn.Module, torch.nn.Module, tuple[Tensor, Tensor]], Tensor]:
    """``compute_loss`` of an :class:`~grappa_cli.train.objective.Objective` on pairs.

    Barlow Twins on the two members of each pair, plus ``weight`` times the attention
    balance of both members together when ``weight > 0`` and the model fuses by attention.
    """

    def compute(model: torch.nn.Module, criterion: torch.nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        if weight <= 0 or not _fuses_by_attention(model):
            return criterion(model(batch[0]), model(batch[1]))
        z1, alpha1 = model(batch[0], return_attention=True)
        z2, alpha2 = model(batch[1], return_attention=True)
        return criterion(z1, z2) + weight * attention_balance(torch.cat([alpha1, alpha2]))

    return compute


def _fuses_by_attention(model: torch.nn.Module) -> bool:
    """Whether ``model`` (the GrappaModel inside the Objective, which DDP wraps as a whole) has alphas to balance."""
    return getattr(model, "fusion_kind", None) == "attention" and getattr(model, "num_sets", 0) > 1
