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

How attention fusion starts (the paper does not say) is ``init``:

* ``"uniform"`` (default): the logits are multiplied by a per-layer scale ``s`` that starts at
  0, so every alpha starts at ``1/N`` and M* starts *exactly* at Grappa-avg. Q and K keep
  ``nn.Linear``'s initialisation; ``s`` is a 1-D parameter, so LARS updates it with plain SGD
  and it can grow from zero (LARS scales a weight's step by its norm, so a zero-initialised
  Q or K would never move). Training then only departs from Grappa-avg where the loss asks.
* ``"linear"``: Q and K with ``nn.Linear``'s default initialisation and no scale, the literal
  eq. 3. Its step-0 attention is far from uniform (random projections of wide features give
  large logits), so a short training run ends close to that random start.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FUSION_KINDS = ("mean", "attention", "router")
ATTENTION_INITS = ("uniform", "linear")


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

    def __init__(self, dim: int, num_sets: int, init: str = "uniform") -> None:
        super().__init__()
        if num_sets < 1:
            raise ValueError("fusion needs at least one adaptor set")
        if init not in ATTENTION_INITS:
            raise ValueError(f"unknown attention init {init!r}; expected one of {', '.join(ATTENTION_INITS)}")
        self.dim = dim
        self.num_sets = num_sets
        self.init = init
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        # 1-D on purpose: LARS and the weight-decay groups treat 1-D parameters as scales.
        self.logit_scale = nn.Parameter(torch.zeros(1)) if init == "uniform" else None

    def logits(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Scaled dot products ``[B, N]`` of ``Q pool(h_bar) [B, D]`` with ``K pool(U_i) [B, N, D]``."""
        q = self.query(query)
        k = self.key(keys)
        logits = torch.einsum("bd,bnd->bn", q, k) / math.sqrt(self.dim)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale.to(logits.dtype)
        return logits

    def forward(self, query: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        if keys is None:
            raise ValueError("attention fusion needs the pooled adaptor outputs")
        return self.logits(query, keys).softmax(dim=-1)


class RouterFusion(nn.Module):
    """Granularity routing (``route`` strategy): a source classifier mixing per-source choices.

    ``alpha = softmax(W pool(h_bar) + b) @ table[:, :N]``: ``W [S, D]`` and ``b [S]`` classify the
    token-averaged layer input into the S training sources; ``table [S, N + 1]`` holds each
    source's weights over the N sets and, in its last column, the frozen backbone. The alphas
    therefore sum to at most 1; the rest is the backbone's own block, i.e. a null adaptor with
    ``U_0 = y`` (the layer's rewritten form ``x~ + y + sum_i alpha_i A_i`` stays exact, see
    :mod:`grappa_cli.model.layer`). With one source the classifier is constant and alpha is
    that source's row of the table. The number of sources is read from the stored tensors when
    a checkpoint is loaded, so every loader can build the layer as ``RouterFusion(dim, N)``.
    """

    kind = "router"
    needs_keys = False
    includes_backbone = True

    def __init__(self, dim: int, num_sets: int, num_sources: int = 1) -> None:
        super().__init__()
        if num_sets < 1 or num_sources < 1:
            raise ValueError("routing needs at least one adaptor set and one source")
        self.dim = dim
        self.num_sets = num_sets
        self.weight = nn.Parameter(torch.zeros(num_sources, dim))
        self.bias = nn.Parameter(torch.zeros(num_sources))
        self.register_buffer("table", torch.full((num_sources, num_sets + 1), 1.0 / (num_sets + 1)))

    @property
    def num_sources(self) -> int:
        return int(self.bias.shape[0])

    def set_table(self, table: torch.Tensor) -> None:
        """Route S sources: ``table [S, N + 1]`` (rows sum to 1); the classifier restarts at zero."""
        s, width = table.shape
        if width != self.num_sets + 1:
            raise ValueError(f"a routing table for {self.num_sets} sets has {self.num_sets + 1} columns, got {width}")
        device = self.weight.device
        self.weight = nn.Parameter(torch.zeros(s, self.dim, device=device))
        self.bias = nn.Parameter(torch.zeros(s, device=device))
        self.table = table.to(device=device, dtype=torch.float32).clone()

    def source_probabilities(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, S]``: how much each image looks like each training source."""
        logits = query.to(self.weight.dtype) @ self.weight.t() + self.bias
        return logits.softmax(dim=-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """``alpha [B, N]`` (summing to at most 1; the rest weighs the backbone)."""
        mix = self.source_probabilities(query) @ self.table.to(self.weight.dtype)
        return mix[:, : self.num_sets].to(query.dtype)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        stored = state_dict.get(prefix + "bias")
        if stored is not None and stored.shape[0] != self.num_sources:  # S is only known from the file
            s = int(stored.shape[0])
            self.weight = nn.Parameter(self.weight.new_zeros(s, self.dim))
            self.bias = nn.Parameter(self.bias.new_zeros(s))
            self.table = self.table.new_zeros(s, self.num_sets + 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def make_fusion(kind: str, dim: int, num_sets: int, attention_init: str = "uniform") -> nn.Module:
    """A fresh fusion layer of ``kind`` (``"mean"``, ``"attention"`` started as ``attention_init``, ``"router"``)."""
    if kind == "mean":
        return MeanFusion(num_sets)
    if kind == "attention":
        return AttentionFusion(dim, num_sets, init=attention_init)
    if kind == "router":
        return RouterFusion(dim, num_sets)
    raise ValueError(f"unknown fusion kind {kind!r}; expected one of {', '.join(FUSION_KINDS)}")
