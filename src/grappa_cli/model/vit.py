"""timm Vision Transformers as Grappa backbones (the built-in ``timm-vit`` provider).

Each timm ``Block`` computes (timm 1.0.31)::

    x = x + drop_path1(ls1(attn(norm1(x), attn_mask=..., is_causal=...)))   # x~
    x = x + drop_path2(ls2(mlp(norm2(x))))                                  # x~ + y

:func:`split_block` runs the same operations but stops before the last addition and
returns ``(x~, y)``; ``x~ + y`` is then bit-identical to the block's output. The model's
stem (patch embedding, position embedding, patch dropout, pre-norm) and head (final norm,
token pooling, fc-norm) are timm's own methods, so ``z = LN(h^L)[class]`` is computed
exactly as ``forward_head(forward_features(x), pre_logits=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from grappa_cli.errors import ConfigError, GrappaError
from grappa_cli.model.backbone import RANDOM_INIT_SEED, Backbone, BackboneSpec, make_model_id
from grappa_cli.model.weights import (
    cached_hub_file,
    ensure_hub_reachable,
    how_to_pass_weights,
    read_state_dict,
)

_VIT_MODULE = "timm.models.vision_transformer"


def is_timm_vit(model_name: str) -> bool:
    """Whether ``model_name`` is a timm model defined by timm's ``VisionTransformer`` module."""
    import timm

    if model_name.startswith("hf-hub:") or not timm.is_model(model_name):
        return False
    arch = timm.models.get_arch_name(model_name)
    return timm.models.model_entrypoint(arch).__module__ == _VIT_MODULE


def split_block(
    block: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x~, y)`` of a timm ``Block``: the attention residual and the MLP branch (eq. 1)."""
    x_tilde = x + block.drop_path1(
        block.ls1(block.attn(block.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
    )
    y = block.drop_path2(block.ls2(block.mlp(block.norm2(x_tilde))))
    return x_tilde, y


class ViTBackbone(Backbone):
    """A frozen timm ``VisionTransformer``; its L blocks are the adaptable layers."""

    def __init__(self, model: nn.Module, name: str, data_config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.layer_dims = tuple(int(model.embed_dim) for _ in model.blocks)
        self.data_config = dict(data_config)
        self.model_id = make_model_id(name, model)
        self.freeze()

    def stem(self, images: torch.Tensor, **layer_kwargs: Any) -> torch.Tensor:
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def layer_parts(
        self,
        index: int,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return split_block(self.model.blocks[index], x, attn_mask=attn_mask, is_causal=is_causal)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.forward_head(m.norm(x), pre_logits=True)

    def forward(
        self,
        images: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        m = self.model
        return m.forward_head(
            m.forward_features(images, attn_mask=attn_mask, is_causal=is_causal), pre_logits=True
        )


def vit_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config for ``model``, with ``input_size`` following the built ``img_size``.

    timm resolves the config from the pretrained tag, which keeps 224 px even when the model
    was built with another ``img_size``; the patch embedding knows the real size.
    """
    from timm.data import resolve_model_data_config

    config = dict(resolve_model_data_config(model))
    img_size = getattr(model.patch_embed, "img_size", None)
    if img_size is not None:
        config["input_size"] = (int(config["input_size"][0]), int(img_size[0]), int(img_size[1]))
    return config


def _create(spec: BackboneSpec, pretrained: bool, **extra: Any) -> nn.Module:
    import timm

    kwargs = {**spec.kwargs, "num_classes": 0, **extra}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return timm.create_model(spec.name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"{spec.where}: backbone.kwargs: timm rejects them for {spec.name!r} ({exc})",
            hint=f"fix backbone.kwargs in {spec.where}",
        ) from None
    except RuntimeError as exc:
        if "pretrained tag" in str(exc) or "Unknown model" in str(exc):
            raise ConfigError(
                f"{spec.where}: backbone.name: {exc}", hint=f"fix backbone.name in {spec.where}"
            ) from None
        raise


def _check_structure(model: nn.Module, name: str) -> None:
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer) or (
        type(model).forward_features is not VisionTransformer.forward_features
    ):
        raise ConfigError(
            f"{name!r} is not a plain timm VisionTransformer", hint="use another backbone provider"
        )
    for index, block in enumerate(model.blocks):
        if not isinstance(block, Block) or type(block).forward is not Block.forward:
            raise ConfigError(
                f"{name!r} block {index} is a {type(block).__name__}, which the timm-vit provider "
                "cannot split into attention and MLP branches",
                hint="use a ViT with standard pre-norm blocks",
            )


def load_vit_weights(model: nn.Module, state: dict[str, torch.Tensor], source: Path, name: str) -> None:
    """Load ``state`` into ``model`` requiring every key to map (classifier heads aside)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(dict(state), model)
    expected = model.state_dict()
    classifiers = model.pretrained_cfg.get("classifier") or "head"
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    state = {
        k: v for k, v in state.items() if k in expected or not any(k.startswith(f"{c}.") for c in classifiers)
    }
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        raise GrappaError(
            f"weights {source} do not fit {name!r}: {'; '.join(parts)}",
            hint="check that backbone.name and backbone.kwargs describe the model these weights are for",
        )
    model.load_state_dict(state, strict=True)


def build_vit_backbone(spec: BackboneSpec) -> ViTBackbone:
    """Build a frozen timm ViT: weights from ``spec.weights``, else timm's hub, else random."""
    import timm

    if not is_timm_vit(spec.name):
        raise ConfigError(
            f"{spec.where}: backbone.name: {spec.name!r} is not a timm VisionTransformer",
            hint="e.g. vit_small_patch16_224.dino",
        )
    if spec.weights is not None:
        model = _create(spec, pretrained=False)
        _check_structure(model, spec.name)
        load_vit_weights(model, read_state_dict(spec.weights, where=spec.where), spec.weights, spec.name)
    elif spec.pretrained:
        pretrained_cfg = timm.models.get_pretrained_cfg(spec.name)
        cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
        cached = cached_hub_file(cfg)
        if cached is None:
            ensure_hub_reachable(spec.name, cfg, where=spec.where)
        try:
            overlay = {"pretrained_cfg_overlay": {"file": str(cached)}} if cached else {}
            model = _create(spec, pretrained=True, **overlay)
        except (OSError, RuntimeError) as exc:
            raise GrappaError(
                f"cannot load pretrained weights for {spec.name!r} ({type(exc).__name__}: {exc})",
                hint=how_to_pass_weights(spec.where),
            ) from None
        _check_structure(model, spec.name)
    else:
        model = _create(spec, pretrained=False)
        _check_structure(model, spec.name)
    model.eval()
    return ViTBackbone(model, spec.name, vit_data_config(model))
