"""The Grappa model: frozen backbone + N adaptor sets + fusion (M, M + P_i, or M*).

* ``GrappaModel.backbone_only(backbone)``: M, the pretrained model;
* ``GrappaModel.with_adaptor_sets(backbone, [set_i])``: M + P_i, one adaptor set (alpha = 1);
* ``GrappaModel.with_adaptor_sets(backbone, sets, fusion="mean" | "attention" | layers)``: M*.

``forward`` returns the un-normalised representation z (the backbone's pooled output);
``embed`` L2-normalises it for retrieval. The backbone is frozen for good; which of the
adaptor and fusion parameters train is set with :meth:`GrappaModel.set_trainable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from grappa_cli.model.adaptor import AdaptorBank, AdaptorSet
from grappa_cli.model.backbones.backbone import Backbone
from grappa_cli.model.fusion import make_fusion
from grappa_cli.model.layer import GrappaLayer

FusionArg = str | None | Sequence[nn.Module]


class GrappaModel(nn.Module):
    """A frozen backbone with, per adaptable layer, an :class:`AdaptorBank` and a fusion layer."""

    def __init__(self, backbone: Backbone, layers: Sequence[GrappaLayer] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = nn.ModuleList(layers or [])
        if self.layers:
            if len(self.layers) != backbone.num_layers:
                raise ValueError(f"{len(self.layers)} Grappa layers for a backbone of {backbone.num_layers}")
            for index, (layer, dim) in enumerate(zip(self.grappa_layers(), backbone.layer_dims, strict=True)):
                if layer.bank.dim != dim:
                    raise ValueError(
                        f"layer {index}: adaptors of width {layer.bank.dim}, backbone layer {dim}"
                    )
            counts = {layer.bank.num_adaptors for layer in self.grappa_layers()}
            if len(counts) != 1:
                raise ValueError(
                    f"every layer must hold the same number of adaptor sets (got {sorted(counts)})"
                )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def backbone_only(cls, backbone: Backbone) -> GrappaModel:
        """M: the backbone alone."""
        return cls(backbone)

    @classmethod
    def with_adaptor_sets(
        cls,
        backbone: Backbone,
        sets: Sequence[AdaptorSet],
        fusion: FusionArg = "mean",
        attention_init: str = "uniform",
        strength: float = 1.0,
    ) -> GrappaModel:
        """M + P_i (one set) or M* (N sets fused by ``"mean"``, ``"attention"`` or given layers).

        ``strength``: the share of the fused adaptation every layer applies (:meth:`set_strength`).

        A fresh ``"attention"`` fusion starts as ``attention_init`` (see
        :class:`~grappa_cli.model.fusion.AttentionFusion`: ``"uniform"`` starts at Grappa-avg).

        ``fusion`` may be ``None`` only for a single set (alpha is then 1); it may also be the
        L fusion layers of a checkpoint (:func:`~grappa_cli.model.checkpoint.load_fusion`).
        The adaptor sets are copied into stacked banks; the fusion layers are used as given.
        """
        if not sets:
            raise ValueError("with_adaptor_sets needs at least one adaptor set")
        for i, adaptor_set in enumerate(sets):
            if adaptor_set.layer_dims != backbone.layer_dims:
                raise ValueError(
                    f"adaptor set {i} has layer widths {adaptor_set.layer_dims}, "
                    f"the backbone {backbone.layer_dims}"
                )
        n = len(sets)
        if fusion is None:
            if n != 1:
                raise ValueError(f'{n} adaptor sets need a fusion ("mean" or "attention")')
            fusion_layers: Sequence[nn.Module] = [make_fusion("mean", d, 1) for d in backbone.layer_dims]
        elif isinstance(fusion, str):
            fusion_layers = [make_fusion(fusion, d, n, attention_init) for d in backbone.layer_dims]
        else:
            fusion_layers = list(fusion)
            if len(fusion_layers) != backbone.num_layers:
                raise ValueError(
                    f"{len(fusion_layers)} fusion layers for a backbone of {backbone.num_layers}"
                )
        layers = [
            GrappaLayer(AdaptorBank.from_adaptors([s.adaptors()[index] for s in sets]), fusion_layers[index])
            for index in range(backbone.num_layers)
        ]
        model = cls(backbone, layers).set_strength(strength)
        param = next(backbone.parameters(), None)
        return model.to(param.device) if param is not None else model

    @classmethod
    def from_checkpoints(
        cls,
        backbone: Backbone,
        adaptor_paths: Sequence[Path],
        fusion: str | Path | None = "mean",
    ) -> GrappaModel:
        """Load adaptor sets (and, given a path, a fusion checkpoint) onto ``backbone``."""
        from grappa_cli.model.checkpoint import load_adaptor_set, load_fusion

        sets = [load_adaptor_set(Path(p), backbone) for p in adaptor_paths]
        if isinstance(fusion, Path):
            checkpoint = load_fusion(fusion, backbone, num_sets=len(sets))
            return cls.with_adaptor_sets(backbone, sets, fusion=checkpoint.layers, strength=checkpoint.strength)
        return cls.with_adaptor_sets(backbone, sets, fusion=fusion)

    # -- structure ----------------------------------------------------------------------

    def grappa_layers(self) -> list[GrappaLayer]:
        """The L Grappa layers (``self.layers``, their ``nn.ModuleList``), typed as such."""
        return cast("list[GrappaLayer]", list(self.layers))

    @property
    def num_sets(self) -> int:
        """N, the number of adaptor sets (0 for the plain backbone)."""
        return self.grappa_layers()[0].bank.num_adaptors if self.layers else 0

    @property
    def fusion_kind(self) -> str | None:
        """``"mean"``, ``"attention"`` or None (no adaptors)."""
        return cast(str, self.grappa_layers()[0].fusion.kind) if self.layers else None

    @property
    def strength(self) -> float:
        """The share of the fused adaptation the layers apply (1 for the plain backbone)."""
        return self.grappa_layers()[0].strength if self.layers else 1.0

    def set_strength(self, strength: float) -> GrappaModel:
        """Apply ``strength`` of the fused adaptation in every layer (in place; returns ``self``).

        1 is the paper's M*, 0 the backbone M; in between the adaptors' up projections are
        interpolated towards zero, i.e. the model towards the frozen backbone
        (:class:`~grappa_cli.model.layer.GrappaLayer`).
        """
        strength = float(strength)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1] (got {strength})")
        for layer in self.grappa_layers():
            layer.strength = strength
        return self

    def fusion_layers(self) -> list[nn.Module]:
        """The L fusion layers (for :func:`~grappa_cli.model.checkpoint.save_fusion`)."""
        return [layer.fusion for layer in self.grappa_layers()]

    def adaptor_set(self, index: int) -> AdaptorSet:
        """A detached copy of adaptor set ``index`` (for saving after training)."""
        if not 0 <= index < self.num_sets:
            raise IndexError(f"adaptor set {index} out of range (model holds {self.num_sets})")
        return AdaptorSet([layer.bank.adaptor(index) for layer in self.grappa_layers()])

    def adaptor_sets(self) -> list[AdaptorSet]:
        return [self.adaptor_set(i) for i in range(self.num_sets)]

    # -- parameters ---------------------------------------------------------------------

    def adaptor_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.grappa_layers() for p in layer.bank.parameters()]

    def fusion_parameters(self) -> list[nn.Parameter]:
        """The Q and K projections of attention fusion (empty for mean fusion)."""
        return [p for layer in self.grappa_layers() for p in layer.fusion.parameters()]

    def set_trainable(self, *, adaptors: bool, fusion: bool) -> list[nn.Parameter]:
        """Choose what trains (the backbone never does); returns the trainable parameters.

        Adaptor training: ``adaptors=True, fusion=False``; fusion training (step 3):
        ``adaptors=False, fusion=True`` so only Q and K receive gradients.
        """
        for param in self.adaptor_parameters():
            param.requires_grad_(adaptors)
        for param in self.fusion_parameters():
            param.requires_grad_(fusion)
        return self.trainable_parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def requires_grad_(self, requires_grad: bool = True) -> GrappaModel:
        """Like ``nn.Module.requires_grad_`` but never unfreezes the backbone."""
        self.set_trainable(adaptors=requires_grad, fusion=requires_grad)
        return self

    # -- computation --------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        *,
        return_attention: bool = False,
        **layer_kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """z ``[B, embed_dim]``; with ``return_attention`` also alpha ``[B, L, N]``.

        ``layer_kwargs`` (e.g. ``attn_mask``, ``is_causal`` for ViTs) reach every backbone layer.
        """
        backbone = self.backbone
        if not self.layers:
            z = backbone(images, **layer_kwargs)
            if return_attention:
                return z, z.new_zeros((z.shape[0], backbone.num_layers, 0))
            return z
        with torch.no_grad():  # nothing before the first adaptor trains
            x = backbone.stem(images, **layer_kwargs)
        alphas = []
        for index, layer in enumerate(self.layers):
            base, branch = backbone.layer_parts(index, x, **layer_kwargs)
            x, alpha = layer(base, branch)
            alphas.append(alpha)
        z = backbone.head(x)
        if return_attention:
            return z, torch.stack(alphas, dim=1)
        return z

    def embed(self, images: torch.Tensor, **layer_kwargs: Any) -> torch.Tensor:
        """L2-normalised representation (what retrieval compares)."""
        return F.normalize(cast(torch.Tensor, self.forward(images, **layer_kwargs)), dim=-1)


def new_adaptor_set(
    backbone: Backbone,
    bottleneck: int,
    seed: int = 0,
    *,
    k: int | None = None,
    config_path: Path | str | None = None,
) -> AdaptorSet:
    """A fresh adaptor set for ``backbone``: random down projections (from ``seed``), zero up projections.

    It outputs exactly zero until trained. ``bottleneck`` (D') must be below the widest layer's
    width (a ConfigError naming ``adapt.bottleneck`` in ``config_path`` otherwise); a layer
    narrower than ``D' + 1`` gets ``D'_l = D_l - 1`` (CNN stages of different widths).
    """
    adaptor_set = AdaptorSet.new(backbone.layer_dims, bottleneck, seed=seed, k=k, config_path=config_path)
    param = next(backbone.parameters(), None)
    return adaptor_set.to(param.device) if param is not None else adaptor_set
