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

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from grappa_cli.errors import ConfigError
from grappa_cli.model.backbones.backbone import Backbone, BackboneSpec, make_model_id
from grappa_cli.model.backbones.timm_models import classifier_prefixes, create_hub_model, create_timm_model, load_exact
from grappa_cli.model.backbones.weights import read_state_dict

if TYPE_CHECKING:
    from timm.models.vision_transformer import Block, VisionTransformer

_VIT_MODULE = "timm.models.vision_transformer"


def is_timm_vit(model_name: str) -> bool:
    """Whether ``model_name`` is a timm model defined by timm's ``VisionTransformer`` module."""
    import timm

    if model_name.startswith("hf-hub:") or not timm.is_model(model_name):
        return False
    arch = timm.models.get_arch_name(model_name)
    return timm.models.model_entrypoint(arch).__module__ == _VIT_MODULE


def split_block(
    block: Block,
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

    def __init__(self, model: VisionTransformer, name: str, data_config: Mapping[str, object]) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.layer_dims = tuple(int(model.embed_dim) for _ in model.blocks)
        self.data_config = dict(data_config)
        self.model_id = make_model_id(name, model)
        self.freeze()

    def stem(self, images: torch.Tensor, **layer_kwargs: object) -> torch.Tensor:
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
        **layer_kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        block = cast("Block", self.model.blocks[index])  # every block is one (_check_structure)
        return split_block(block, x, attn_mask=attn_mask, is_causal=is_causal, **layer_kwargs)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.forward_head(m.norm(x), pre_logits=True)

    def forward(
        self,
        images: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        **layer_kwargs: Any,
    ) -> torch.Tensor:
        m = self.model
        return m.forward_head(
            m.forward_features(images, attn_mask=attn_mask, is_causal=is_causal, **layer_kwargs), pre_logits=True
        )


def vit_data_config(model: nn.Module) -> dict[str, object]:
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


def _check_structure(model: nn.Module, name: str) -> VisionTransformer:
    """``model`` itself, once checked to be a plain timm VisionTransformer of standard blocks."""
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
    return model


def load_vit_weights(model: VisionTransformer, state: dict[str, torch.Tensor], source: Path, name: str) -> None:
    """Load ``state`` into ``model`` requiring every key to map (classifier heads aside)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(dict(state), model)
    load_exact(model, state, source, name, drop_prefixes=classifier_prefixes(model))


def build_vit_backbone(spec: BackboneSpec) -> ViTBackbone:
    """Build a frozen timm ViT: weights from ``spec.weights``, else timm's hub, else random."""
    if not is_timm_vit(spec.name):
        raise ConfigError(
            f"{spec.where}: backbone.name: {spec.name!r} is not a timm VisionTransformer",
            hint="e.g. vit_small_patch16_224.dino",
        )
    if spec.weights is not None:
        model = _check_structure(create_timm_model(spec, pretrained=False), spec.name)
        load_vit_weights(model, read_state_dict(spec.weights, where=spec.where), spec.weights, spec.name)
    elif spec.pretrained:
        model = _check_structure(create_hub_model(spec), spec.name)
    else:
        model = _check_structure(create_timm_model(spec, pretrained=False), spec.name)
    model.eval()
    return ViTBackbone(model, spec.name, vit_data_config(model))
