"""One Grappa layer (Fig. 3, Algorithm 1): adaptors and fusion around one backbone layer.

The paper's layer, given the backbone layer's parts ``x~`` (``base``) and ``y`` (``branch``)::

    h_bar = x~ + y
    U_i   = A_i(h_bar) + y                                   i = 1..N
    h     = F(h_bar, U) + x~,     F(h_bar, U) = sum_i alpha_i U_i

Because the alphas sum to 1 (mean: 1/N each; attention: a softmax), ``sum_i alpha_i U_i =
y + sum_i alpha_i A_i(h_bar)``, and we compute the layer as

    h = x~ + (y + sum_i alpha_i A_i(h_bar))

with the attention keys ``pool(U_i) = pool(A_i(h_bar)) + pool(y)`` (pool: mean over the
tokens; the up projection is affine, so ``pool(A_i(h_bar))`` is the up projection of the
pooled hidden activations). The two forms are equal in exact arithmetic; the rewritten one
has two advantages in floating point and speed:

* with zero-initialised adaptors the sum is exactly 0, so ``h = x~ + y`` is bit-identical to
  the backbone's own block (averaging N float copies of ``y`` is not);
* the N outputs ``U [N, B, T, D]`` are never materialised: the alpha-weighted sum is a single
  ``N*D' -> D`` matrix product (:meth:`AdaptorBank.mix`).

:meth:`GrappaLayer.reference_forward` keeps the literal formula for tests and inspection.

**Routing to the backbone.** A router fusion (:class:`~grappa_cli.model.fusion.RouterFusion`)
may give the frozen backbone part of the weight: its alphas sum to ``a <= 1`` and the rest
``1 - a`` weighs a null set ``U_0 = y`` (no adaptor). The rewritten form is unchanged, since
``(1 - a) y + sum_i alpha_i (A_i + y) = y + sum_i alpha_i A_i``.

**Strength.** A layer may apply only part of its adaptation: ``h = x~ + (y + s sum_i alpha_i
A_i(h_bar))`` with the strength ``s`` in [0, 1] (``[fuse] strength``). ``s = 1`` is the
paper's layer, ``s = 0`` the backbone's own block; in between, since the up projections are
linear, it is the model whose up projections are interpolated towards zero, i.e. towards the
frozen backbone (WiSE-FT's weight-space ensembling; exactly so for mean fusion). Attention is
computed as trained, from the unscaled ``U_i``: the fusion trains at ``s = 1`` and the saved
model applies ``s`` to the weighted sum only.
"""

from __future__ import annotations

import torch
from torch import nn

from grappa_cli.model.adaptor import AdaptorBank


def token_mean(x: torch.Tensor, feature_dims: int = 1) -> torch.Tensor:
    """Average over the positions: every dimension between batch and the last ``feature_dims``."""
    dims = tuple(range(1, x.dim() - feature_dims))
    return x.mean(dim=dims) if dims else x


class GrappaLayer(nn.Module):
    """The N adaptors of one layer (an :class:`AdaptorBank`) and their fusion layer."""

    def __init__(self, bank: AdaptorBank, fusion: nn.Module, strength: float = 1.0) -> None:
        super().__init__()
        if fusion.num_sets != bank.num_adaptors:
            raise ValueError(
                f"fusion expects {fusion.num_sets} adaptor sets, the bank holds {bank.num_adaptors}"
            )
        self.bank = bank
        self.fusion = fusion
        #: share of the fused adaptation the layer adds (1 = the paper's layer, 0 = the backbone's)
        self.strength = float(strength)

    def attention(self, h_bar: torch.Tensor, branch: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``alpha [B, N]`` from the layer output and the adaptors' hidden activations."""
        query = token_mean(h_bar)
        if not self.fusion.needs_keys:
            return self.fusion(query)
        keys = self.bank.project(token_mean(hidden, feature_dims=2)) + token_mean(branch).unsqueeze(1)
        return self.fusion(query, keys)

    def forward(self, base: torch.Tensor, branch: torch.Tensor,
                alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, alpha)``: the layer output ``x~ + (y + s sum_i alpha_i A_i(h_bar))`` and ``alpha [B, N]``.

        ``alpha`` given: these weights instead of the fusion layer's (fitting a router with the
        earlier layers routed as the image's own source asks).
        """
        h_bar = base + branch
        hidden = self.bank.hidden(h_bar)
        alpha = self.attention(h_bar, branch, hidden) if alpha is None else alpha.to(hidden.dtype)
        delta = self.bank.mix(hidden, alpha)
        if self.strength != 1.0:  # at 1 the output stays bit-identical to the paper's layer
            delta = delta * self.strength
        return base + (branch + delta), alpha

    def reference_forward(
        self, base: torch.Tensor, branch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's literal layer: ``U_i = A_i(h_bar) + y``, ``h = sum_i alpha_i U_i + x~``.

        With a strength ``s`` below 1 the weighted sum is over ``s A_i(h_bar) + y`` while the
        attention still sees the ``U_i`` themselves.
        """
        h_bar = base + branch
        adapted = self.bank(h_bar)  # [N, B, *pos, D]
        U = adapted + branch.unsqueeze(0)
        query = token_mean(h_bar)
        if self.fusion.needs_keys:
            keys = token_mean(U.movedim(0, -2), feature_dims=2)  # [B, N, D]
            alpha = self.fusion(query, keys)
        else:
            alpha = self.fusion(query)
        weights = alpha.t().reshape(alpha.shape[1], alpha.shape[0], *([1] * (U.dim() - 2)))
        applied = self.strength * adapted + branch.unsqueeze(0)
        out = (weights * applied).sum(dim=0) + base
        if getattr(self.fusion, "includes_backbone", False):  # the rest of alpha weighs U_0 = y (no adaptor)
            rest = 1 - alpha.sum(dim=1)
            out = out + rest.reshape(-1, *([1] * (branch.dim() - 1))) * branch
        return out, alpha
