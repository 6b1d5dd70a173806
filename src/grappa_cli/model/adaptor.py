"""Bottleneck adaptors (section 3.4): one set of L adaptors per pseudo-label set.

An adaptor is ``A(h) = W_up GELU(W_down h + b_down) + b_up`` with ``D -> D' -> D`` and
``D' < D``. Its residual connections are not inside the module: the Grappa layer adds
``y`` and ``x~`` around it (``U_i = A_i(h_bar) + y``, ``h = F(h_bar, U) + x~``). The up
projection (weight and bias) starts at zero, so an untrained adaptor outputs exactly 0 and
the adapted model starts as the backbone.

:class:`AdaptorSet` is what one ``grappa adapt`` run trains and saves (one :class:`Adaptor`
per backbone layer). :class:`AdaptorBank` is what a model runs: the N adaptors of one
layer stacked into ``[N, ...]`` parameters and computed in one batched operation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from grappa_cli.errors import ConfigError


def check_bottleneck(bottleneck: int, dims: Sequence[int], config_path: Path | str | None = None) -> None:
    """``0 < D' < D`` (section 3.4), D being the widest adapted layer; else a ConfigError naming the key.

    With one width (a ViT) this is the paper's ``D' < D``. With per-layer widths (CNNs) the
    narrower layers get ``D'_l = min(D', D_l - 1)`` (:func:`layer_bottlenecks`), so ``D'``
    only has to fit the widest layer.
    """
    where = str(config_path) if config_path else "grappa.toml"
    largest = max(dims)
    if min(dims) < 2:
        raise ValueError(f"layer widths {tuple(dims)}: every adapted layer needs D >= 2")
    if not 0 < bottleneck < largest:
        widest = " in the widest layer" if len(set(dims)) > 1 else ""
        raise ConfigError(
            f"{where}: adapt.bottleneck: must be between 1 and D - 1 = {largest - 1} for this backbone "
            f"(D = {largest}{widest}; got {bottleneck})",
            hint=f"lower adapt.bottleneck in {where}",
        )


def layer_bottlenecks(bottleneck: int, dims: Sequence[int]) -> tuple[int, ...]:
    """The bottleneck width of each layer: ``D'_l = min(D', D_l - 1)``.

    Equal to ``D'`` everywhere when every layer is wider than ``D'`` (all ViTs with a valid
    ``D'``); CNN stages narrower than ``D'`` (EfficientNet's 16-, 24- and 40-channel stages)
    get the widest bottleneck that is still one below their width.
    """
    return tuple(min(int(bottleneck), int(d) - 1) for d in dims)


def _init_down(weight: torch.Tensor, bias: torch.Tensor, generator: torch.Generator | None) -> None:
    """``nn.Linear``'s default initialisation, drawn from ``generator`` for repeatability."""
    bound = 1.0 / math.sqrt(weight.shape[-1])
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=generator)
        bias.uniform_(-bound, bound, generator=generator)


class Adaptor(nn.Module):
    """One bottleneck adaptor ``D -> D' -> D`` with GELU; zero output until trained."""

    def __init__(self, dim: int, bottleneck: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_bottleneck(bottleneck, [dim])
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        _init_down(self.down.weight, self.down.bias, generator)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @property
    def dim(self) -> int:
        return self.down.in_features

    @property
    def bottleneck(self) -> int:
        return self.down.out_features

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


class AdaptorSet(nn.Module):
    """The L adaptors ``A_i^1..A_i^L`` learnt for one pseudo-label set P_i.

    ``k`` (number of clusters of P_i) and ``metadata`` (what its checkpoint recorded) are
    informational; they travel with the set from :func:`~grappa_cli.model.checkpoint.load_adaptor_set`.
    """

    def __init__(
        self, adaptors: Sequence[Adaptor], *, k: int | None = None, metadata: Mapping[str, object] | None = None
    ) -> None:
        super().__init__()
        if not adaptors:
            raise ValueError("an adaptor set needs at least one adaptor")
        self.layers = nn.ModuleList(adaptors)
        self.k = k
        self.metadata = dict(metadata or {})

    @classmethod
    def new(
        cls,
        layer_dims: Sequence[int],
        bottleneck: int,
        *,
        seed: int = 0,
        k: int | None = None,
        config_path: Path | str | None = None,
    ) -> AdaptorSet:
        """A fresh (untrained, zero-output) set for a backbone with these layer widths.

        Layer l gets the bottleneck ``min(bottleneck, D_l - 1)`` (:func:`layer_bottlenecks`).
        """
        check_bottleneck(bottleneck, layer_dims, config_path)
        generator = torch.Generator().manual_seed(seed)
        widths = layer_bottlenecks(bottleneck, layer_dims)
        return cls([Adaptor(d, b, generator=generator) for d, b in zip(layer_dims, widths, strict=True)], k=k)

    def adaptors(self) -> list[Adaptor]:
        """The L adaptors (``self.layers``, their ``nn.ModuleList``), typed as such."""
        return cast("list[Adaptor]", list(self.layers))

    @property
    def layer_dims(self) -> tuple[int, ...]:
        return tuple(a.dim for a in self.adaptors())

    @property
    def bottleneck(self) -> int:
        """D', the configured bottleneck: that of the widest layers (narrower ones may use less)."""
        return max(a.bottleneck for a in self.adaptors())

    @property
    def bottlenecks(self) -> tuple[int, ...]:
        """``D'_l`` of each layer."""
        return tuple(a.bottleneck for a in self.adaptors())

    def __len__(self) -> int:
        return len(self.layers)


class AdaptorBank(nn.Module):
    """The N adaptors of one layer as stacked parameters, run as one batched operation.

    Parameters: ``down_weight [N, D', D]``, ``down_bias [N, D']``, ``up_weight [N, D, D']``,
    ``up_bias [N, D]``. The down projections of all N adaptors are one matrix product
    (``D -> N*D'``); the up projections are a batched product over N (:meth:`forward`) or,
    when only the alpha-weighted sum is needed, one matrix product ``N*D' -> D`` of the
    alpha-scaled hidden activations (:meth:`mix`): the N outputs ``[N, B, T, D]`` are never
    materialised on that path.
    """

    def __init__(self, num_adaptors: int, dim: int, bottleneck: int) -> None:
        super().__init__()
        check_bottleneck(bottleneck, [dim])
        self.down_weight = nn.Parameter(torch.zeros(num_adaptors, bottleneck, dim))
        self.down_bias = nn.Parameter(torch.zeros(num_adaptors, bottleneck))
        self.up_weight = nn.Parameter(torch.zeros(num_adaptors, dim, bottleneck))
        self.up_bias = nn.Parameter(torch.zeros(num_adaptors, dim))

    @classmethod
    def from_adaptors(cls, adaptors: Sequence[Adaptor]) -> AdaptorBank:
        """Stack copies of ``adaptors`` (all of one width and bottleneck)."""
        dims = {(a.dim, a.bottleneck) for a in adaptors}
        if len(dims) != 1:
            raise ValueError(f"adaptors of one layer must share D and D' (got {sorted(dims)})")
        dim, bottleneck = dims.pop()
        bank = cls(len(adaptors), dim, bottleneck)
        with torch.no_grad():
            bank.down_weight.copy_(torch.stack([a.down.weight for a in adaptors]))
            bank.down_bias.copy_(torch.stack([a.down.bias for a in adaptors]))
            bank.up_weight.copy_(torch.stack([a.up.weight for a in adaptors]))
            bank.up_bias.copy_(torch.stack([a.up.bias for a in adaptors]))
        return bank.to(adaptors[0].down.weight.device)

    @property
    def num_adaptors(self) -> int:
        return self.down_weight.shape[0]

    @property
    def dim(self) -> int:
        return self.down_weight.shape[2]

    @property
    def bottleneck(self) -> int:
        return self.down_weight.shape[1]

    def adaptor(self, index: int) -> Adaptor:
        """A detached copy of adaptor ``index`` as a standalone module."""
        adaptor = Adaptor(self.dim, self.bottleneck).to(self.down_weight.device, self.down_weight.dtype)
        with torch.no_grad():
            adaptor.down.weight.copy_(self.down_weight[index])
            adaptor.down.bias.copy_(self.down_bias[index])
            adaptor.up.weight.copy_(self.up_weight[index])
            adaptor.up.bias.copy_(self.up_bias[index])
        return adaptor

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        """GELU of all N down projections: ``[B, *pos, D] -> [B, *pos, N, D']`` (one matmul)."""
        n, k, d = self.down_weight.shape
        z = F.linear(h, self.down_weight.reshape(n * k, d), self.down_bias.reshape(n * k))
        return F.gelu(z).unflatten(-1, (n, k))

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each adaptor's up projection of its own hidden part: ``[..., N, D'] -> [..., N, D]``."""
        return torch.einsum("...nk,ndk->...nd", hidden, self.up_weight) + self.up_bias

    def mix(self, hidden: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``sum_i alpha_i A_i`` from the hidden activations, as one matmul.

        ``hidden [B, *pos, N, D']``, ``alpha [B, N]`` -> ``[B, *pos, D]``. Since the up
        projections are linear, ``sum_i alpha_i (W_i g_i + b_i) = [alpha_1 g_1, ..., alpha_N g_N]
        [W_1 ... W_N]^T + alpha b``.
        """
        n, d, k = self.up_weight.shape
        shape = (alpha.shape[0],) + (1,) * (hidden.dim() - 3) + (n, 1)
        scaled = (hidden * alpha.reshape(shape)).flatten(-2)
        weight = self.up_weight.permute(1, 0, 2).reshape(d, n * k)
        bias = (alpha @ self.up_bias).reshape((alpha.shape[0],) + (1,) * (hidden.dim() - 3) + (d,))
        return F.linear(scaled, weight) + bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Every adaptor's output ``A_i(h)``: ``[B, *pos, D] -> [N, B, *pos, D]``."""
        return self.project(self.hidden(h)).movedim(-2, 0)
