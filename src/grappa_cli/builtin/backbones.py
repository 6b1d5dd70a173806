"""Built-in backbone provider: timm Vision Transformers (the paper's DINO ViT-S/16 by default).

This module is imported at CLI start-up, so it stays light: timm and torch are imported
only when a provider method runs.
"""

from __future__ import annotations

from typing import Any

from grappa_cli.hookspecs import Register, hookimpl


class TimmViTProvider:
    """Builds any timm ``VisionTransformer`` by name, frozen, with ``num_classes=0``."""

    name = "timm-vit"
    description = "timm Vision Transformers (default vit_small_patch16_224.dino, the paper's DINO ViT-S/16)"

    def supports(self, model_name: str) -> bool:
        from grappa_cli.model.vit import is_timm_vit

        return is_timm_vit(model_name)

    def model_names(self) -> list[str]:
        """timm's ViT names, plain and with pretrained tags (for "did you mean" suggestions)."""
        import timm

        return timm.list_models(module="vision_transformer") + timm.list_models(
            module="vision_transformer", pretrained=True
        )

    def build(self, spec: Any) -> Any:
        from grappa_cli.model.vit import build_vit_backbone

        return build_vit_backbone(spec)


@hookimpl
def register_backbones(register: Register) -> None:
    register(TimmViTProvider())
