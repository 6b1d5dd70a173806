"""Fusion layers (section 3.5): how much each of the N adaptor sets counts, per image and layer.

A fusion layer maps the token-averaged layer output ``pool(h_bar) [B, D]`` and the
token-averaged adaptor outputs ``pool(U) [B, N, D]`` to attention weights ``alpha [B, N]``
that sum to 1. The layer output is then ``F(h_bar, U) = sum_i alpha_i U_i``.

* :class:`MeanFusion` (Grappa-avg): ``alpha_i = 1/N``, no parameters.
* :class:`AttentionFusion` (eq. 3): ``alpha = softmax((Q pool(h_bar)) . (K pool(U_i)) / sqrt(D))``
  with ``D x D`` projections Q and K (no bias) and no value projection, so the adaptor
  outputs themselves are only re-weighted. Eq. 3 writes a *sum* over the T tokens; the text
  ("we average over the T spatial tokens") and Algorithm 1 (``pool``: average pooling) use
  the *mean*, which we follow: it keeps the logits' scale independent of the image size.
  Q and K start with ``nn.Linear``'s default initialisation (the paper does not state one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

FUSION_KINDS = ("mean", "attention")


class MeanFusion(nn.Module):
    """Grappa-avg: every adaptor set weighs ``1/N``."""

    kind = "mean"
    needs_keys = False

    def __init__(self, num_sets: int) -> None:
        super().__init__()
        if num_sets < 1:
            raise ValueError("fusion needs at least one adaptor set")
        self.num_sets = num_sets

    def forward(self, query: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """``alpha [B, N]`` filled with ``1/N`` (``query [B, D]`` only gives B, dtype and device)."""
        return query.new_full((query.shape[0], self.num_sets), 1.0 / self.num_sets)


class AttentionFusion(nn.Module):
    """Learned fusion of eq. 3: image-level dot-product attention over the N adaptor sets."""

    kind = "attention"
    needs_keys = True

    def __init__(self, dim: int, num_sets: int) -> None:
        super().__init__()
        if num_sets < 1:
            raise ValueError("fusion needs at least one adaptor set")
        self.dim = dim
        self.num_sets = num_sets
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)

    def logits(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Scaled dot products ``[B, N]`` of ``Q pool(h_bar) [B, D]`` with ``K pool(U_i) [B, N, D]``."""
        q = self.query(query)
        k = self.key(keys)
        return torch.einsum("bd,bnd->bn", q, k) / math.sqrt(self.dim)

    def forward(self, query: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        if keys is None:
            raise ValueError("attention fusion needs the pooled adaptor outputs")
        return self.logits(query, keys).softmax(dim=-1)


def make_fusion(kind: str, dim: int, num_sets: int) -> nn.Module:
    """A fresh fusion layer of ``kind`` (``"mean"`` or ``"attention"``)."""
    if kind == "mean":
        return MeanFusion(num_sets)
    if kind == "attention":
        return AttentionFusion(dim, num_sets)
    raise ValueError(f"unknown fusion kind {kind!r}; expected one of {', '.join(FUSION_KINDS)}")
