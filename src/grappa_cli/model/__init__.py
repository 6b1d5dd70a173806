"""The Grappa model: a frozen backbone, adaptor sets and their fusion (paper sections 3.4-3.5).

Modules: ``backbone`` (the Backbone interface, its spec and provider resolver), ``vit``
(timm ViTs), ``cnn`` (timm EfficientNet / MobileNet / ResNet), ``packaged`` (weights
shipped inside Python packages), ``timm_models`` (creating timm models, key checks),
``weights`` (weight files and the hub), ``adaptor`` (Adaptor, AdaptorSet, AdaptorBank),
``fusion`` (mean and attention fusion), ``layer`` (one Grappa layer), ``grappa``
(GrappaModel), ``checkpoint`` (safetensors files). Importing this package imports torch:
the CLI imports it lazily, inside stages.
"""

from grappa_cli.model.adaptor import Adaptor, AdaptorBank, AdaptorSet, check_bottleneck, layer_bottlenecks
from grappa_cli.model.backbones.backbone import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneProvider,
    BackboneSpec,
    build_backbone,
    resolve_provider,
)
from grappa_cli.model.checkpoint import (
    FusionCheckpoint,
    load_adaptor_set,
    load_fusion,
    read_metadata,
    save_adaptor_set,
    save_fusion,
)
from grappa_cli.model.fusion import AttentionFusion, MeanFusion, make_fusion
from grappa_cli.model.grappa import GrappaModel, new_adaptor_set
from grappa_cli.model.layer import GrappaLayer

__all__ = [
    "DEFAULT_BACKBONE",
    "Adaptor",
    "AdaptorBank",
    "AdaptorSet",
    "AttentionFusion",
    "Backbone",
    "BackboneProvider",
    "BackboneSpec",
    "FusionCheckpoint",
    "GrappaLayer",
    "GrappaModel",
    "MeanFusion",
    "build_backbone",
    "check_bottleneck",
    "layer_bottlenecks",
    "load_adaptor_set",
    "load_fusion",
    "make_fusion",
    "new_adaptor_set",
    "read_metadata",
    "resolve_provider",
    "save_adaptor_set",
    "save_fusion",
]
