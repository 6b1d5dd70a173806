"""timm CNNs as Grappa backbones (the built-in ``timm-cnn`` provider).

Three timm model classes, which cover timm's EfficientNet, MobileNet (v1-v4), MnasNet,
FBNet, LCNet, MixNet, TinyNet, HardCoRe-NAS and ResNet / ResNeXt / SE-, ECA-, SK-, Res2- and
ResNeSt families::

    EfficientNet  forward_features: conv_stem, bn1, blocks[0..S-1], conv_head, bn2
                  forward_head:     global_pool
    MobileNetV3   forward_features: conv_stem, bn1, blocks[0..S-1]
                  forward_head:     global_pool, conv_head, norm_head, act2, flatten
    ResNet        forward_features: conv1, bn1, act1, maxpool, layer1..layer4
                  forward_head:     global_pool

The adaptable layers are the *stages* (``blocks[s]``, ``layer<s>``; or, on request, every
block: ``granularity="block"``). :meth:`CNNBackbone.stem` is what comes before the first
stage, :meth:`CNNBackbone.head` what follows the last: the rest of ``forward_features``
(EfficientNet's ``conv_head`` and ``bn2``) and ``forward_head(pre_logits=True)``, so the
image representation is timm's pooled pre-logits feature, computed by timm's own code.

A stage has no branch to split off: ``layer_parts`` returns ``base`` = the stage output and
``branch`` = 0, and the Grappa layer becomes a residual adaptor after the stage (Rebuffi et
al. 2017) with per-position (1x1 convolution) bottlenecks::

    h = base + (0 + sum_i alpha_i A_i(base))

Tensors between layers are channel-last ``[B, H, W, C]`` (the Backbone interface). The timm
model is kept in ``torch.channels_last`` memory format and images are converted to it, so each
stage runs on ``x.permute(0, 3, 1, 2)`` without a copy: that view *is* the NCHW tensor in
channels-last memory that timm's own forward passes between stages, and the composed parts are
bit-identical to ``forward``. Why channels-last: oneDNN's depthwise and 1x1 convolutions run
faster in it on the CPU (0.66-0.87x the time per pass: ``benchmarks/bench_memory_format.py``), and
tensor cores want it on GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from grappa_cli.errors import ConfigError
from grappa_cli.model.backbones.backbone import Backbone, BackboneSpec, make_model_id
from grappa_cli.model.backbones.frozen_layers import keep_less_for_backward
from grappa_cli.model.backbones.packaged import PackagedWeights, convert_by_order, is_lukemelas_state, packaged_weights
from grappa_cli.model.backbones.timm_models import classifier_prefixes, create_hub_model, create_timm_model, load_exact
from grappa_cli.model.backbones.weights import read_state_dict

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    #: a model of one of the three supported timm classes
    TimmCNN = EfficientNet | MobileNetV3 | ResNet

#: timm modules whose models are built from the three supported classes.
CNN_MODULES = (
    "timm.models.efficientnet",
    "timm.models.mobilenetv3",
    "timm.models.hardcorenas",
    "timm.models.resnet",
    "timm.models.sknet",
    "timm.models.res2net",
    "timm.models.resnest",
)

#: What a layer is: a stage of blocks (default) or a single block.
GRANULARITIES = ("stage", "block")

#: Side of the blank image that measures the layer widths at construction.
_PROBE_SIZE = 64


def is_timm_cnn(model_name: str) -> bool:
    """Whether the ``timm-cnn`` provider builds ``model_name`` (a packaged name, or a timm
    model defined in one of :data:`CNN_MODULES`)."""
    if packaged_weights(model_name) is not None:
        return True
    import timm

    if model_name.startswith("hf-hub:") or not timm.is_model(model_name):
        return False
    arch = timm.models.get_arch_name(model_name)
    return timm.models.model_entrypoint(arch).__module__ in CNN_MODULES


def cnn_model_names() -> list[str]:
    """The names the provider knows: timm's, plain and with pretrained tags, and packaged ones."""
    import timm

    from grappa_cli.model.backbones.packaged import PACKAGED

    modules = [m.rsplit(".", 1)[-1] for m in CNN_MODULES]  # list_models wants "resnet"
    names = timm.list_models(module=modules) + timm.list_models(module=modules, pretrained=True)
    return sorted(set(names) | set(PACKAGED))


@dataclass(frozen=True)
class CNNFamily:
    """How one timm class splits into stem, stages and tail (``forward_features`` after the stages)."""

    name: str
    model_class: type[TimmCNN]
    stem: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    stages: Callable[[nn.Module], list[nn.Module]]
    tail: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _mobile_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net = cast("EfficientNet | MobileNetV3", m)
    return net.bn1(net.conv_stem(x))


def _mobile_stages(m: nn.Module) -> list[nn.Module]:
    return list(cast("EfficientNet | MobileNetV3", m).blocks)


def _efficientnet_tail(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net = cast("EfficientNet", m)
    return net.bn2(net.conv_head(x))


def _no_tail(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x  # MobileNetV3: the head conv follows the pooling, inside forward_head


def _resnet_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net = cast("ResNet", m)
    return net.maxpool(net.act1(net.bn1(net.conv1(x))))


def _resnet_stages(m: nn.Module) -> list[nn.Module]:
    return cast("list[nn.Module]", [m.layer1, m.layer2, m.layer3, m.layer4])  # registered with add_module


def _families() -> tuple[CNNFamily, ...]:
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    return (
        CNNFamily("efficientnet", EfficientNet, _mobile_stem, _mobile_stages, _efficientnet_tail),
        CNNFamily("mobilenetv3", MobileNetV3, _mobile_stem, _mobile_stages, _no_tail),
        CNNFamily("resnet", ResNet, _resnet_stem, _resnet_stages, _no_tail),
    )


def family_of(model: nn.Module, name: str) -> CNNFamily:
    """The family of a built timm model; a ConfigError unless it runs the class's own forward."""
    for family in _families():
        cls = family.model_class
        if isinstance(model, cls):
            if (
                type(model).forward_features is not cls.forward_features
                or type(model).forward_head is not cls.forward_head
            ):
                break
            return family
    raise ConfigError(
        f"{name!r} is a {type(model).__name__}, not a plain timm EfficientNet, MobileNetV3 or ResNet",
        hint="use another backbone provider",
    )


def _units(stages: list[nn.Module], granularity: str) -> list[nn.Module]:
    if granularity == "stage":
        return stages
    if granularity == "block":
        return [block for stage in stages for block in (stage if isinstance(stage, nn.Sequential) else [stage])]
    raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)} (got {granularity!r})")


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, H, W, C]`` (a view)."""
    return x.permute(0, 2, 3, 1)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, C] -> [B, C, H, W]`` in channels-last memory, like the tensors timm passes between
    stages of a channels-last model (a view when ``x`` is contiguous, which layer outputs are)."""
    return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def channels_last_images(images: torch.Tensor) -> torch.Tensor:
    """A batch ``[B, 3, H, W]`` in the memory format of the model's convolutions."""
    return images.contiguous(memory_format=torch.channels_last)


class CNNBackbone(Backbone):
    """A frozen timm EfficientNet / MobileNetV3 / ResNet; its stages (or blocks) are the layers.

    ``layer_parts`` returns ``(stage output, 0)``: the adaptors are residual adaptors after
    each stage. ``layer_dims`` are the stages' output channels (different per layer).
    Global pooling makes any input size valid (``backbone.input_size``).
    """

    any_input_size = True

    def __init__(
        self,
        model: nn.Module,
        name: str,
        data_config: Mapping[str, object],
        *,
        granularity: str = "stage",
    ) -> None:
        super().__init__()
        self.model = cast("TimmCNN", model)  # family_of below checks that it is one
        self.name = name
        self.family = family_of(model, name)
        self.granularity = granularity
        # the timm modules of the adaptable layers: references into self.model (a plain
        # tuple, so they are not registered twice)
        self.units = tuple(_units(self.family.stages(model), granularity))
        self.data_config = dict(data_config)
        model.to(memory_format=torch.channels_last)  # see the module docstring
        model.eval()
        self.layer_dims, self.embed_dim = self._measure()
        self.model_id = make_model_id(name, model)
        self.freeze()
        # frozen for good: its convolutions and batch norms need not keep their inputs for the
        # backward pass of the adaptors and the fusion (bit-identical gradients, less memory)
        keep_less_for_backward(model)

    def _measure(self) -> tuple[tuple[int, ...], int]:
        """Channels of each layer's output and of z, from one blank image."""
        param = next(self.model.parameters())
        pretrained_cfg = cast("Mapping[str, object]", self.model.pretrained_cfg)  # set by timm's builder
        size = self.data_config["input_size"][1:] if pretrained_cfg.get("fixed_input_size") else (
            _PROBE_SIZE,
            _PROBE_SIZE,
        )
        probe = channels_last_images(torch.zeros(1, 3, *size, dtype=param.dtype, device=param.device))
        dims = []
        with torch.no_grad():
            x = self.family.stem(self.model, probe)
            for unit in self.units:
                x = unit(x)
                dims.append(int(x.shape[1]))
            z = self.model.forward_head(self.family.tail(self.model, x), pre_logits=True)
        return tuple(dims), int(z.shape[-1])

    def stem(self, images: torch.Tensor, **layer_kwargs: object) -> torch.Tensor:
        _no_kwargs(layer_kwargs)
        return to_channels_last(self.family.stem(self.model, channels_last_images(images)))

    def layer_parts(self, index: int, x: torch.Tensor, **layer_kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        _no_kwargs(layer_kwargs)
        base = to_channels_last(self.units[index](to_channels_first(x)))
        return base, base.new_zeros(()).expand_as(base)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.forward_head(self.family.tail(m, to_channels_first(x)), pre_logits=True)

    def forward(self, images: torch.Tensor, **layer_kwargs: object) -> torch.Tensor:
        _no_kwargs(layer_kwargs)
        m = self.model
        return m.forward_head(m.forward_features(channels_last_images(images)), pre_logits=True)


def _no_kwargs(layer_kwargs: dict[str, object]) -> None:
    if layer_kwargs:
        raise TypeError(f"CNN backbones take no layer arguments (got {', '.join(sorted(layer_kwargs))})")


def load_cnn_weights(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str, name: str) -> None:
    """Load a weights file: timm keys (classifier ignored), or lukemelas keys mapped by order."""
    if is_lukemelas_state(state):
        state = convert_by_order(state, model.state_dict(), drop_source_prefixes=("_fc",), source_name=str(source))
    load_exact(model, state, source, name, drop_prefixes=classifier_prefixes(model))


def _build_packaged(spec: BackboneSpec, packaged: PackagedWeights, granularity: str) -> CNNBackbone:
    model = create_timm_model(spec, pretrained=False, architecture=packaged.architecture)
    family_of(model, spec.name)
    state = packaged.state_dict_for(model.state_dict())
    load_exact(model, state, packaged.path(), spec.name)
    return CNNBackbone(model, spec.name, packaged.data_config, granularity=granularity)


def build_cnn_backbone(spec: BackboneSpec, *, granularity: str = "stage") -> CNNBackbone:
    """Build a frozen timm CNN: packaged weights (e.g. ``efficientnet_lite0``), else
    ``spec.weights``, else timm's hub, else random."""
    from timm.data import resolve_model_data_config

    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)} (got {granularity!r})")
    if not is_timm_cnn(spec.name):
        raise ConfigError(
            f"{spec.where}: backbone.name: {spec.name!r} is not a timm EfficientNet, MobileNet or ResNet",
            hint="e.g. efficientnet_lite0 or resnet50.a1_in1k",
        )
    packaged = packaged_weights(spec.name)
    if packaged is not None and spec.pretrained and spec.weights is None:
        return _build_packaged(spec, packaged, granularity)
    if spec.weights is not None:
        model = create_timm_model(spec, pretrained=False)
        family_of(model, spec.name)
        load_cnn_weights(model, read_state_dict(spec.weights, where=spec.where), spec.weights, spec.name)
    elif spec.pretrained:
        model = create_hub_model(spec)
    else:
        model = create_timm_model(spec, pretrained=False)
    model.eval()
    return CNNBackbone(model, spec.name, dict(resolve_model_data_config(model)), granularity=granularity)
