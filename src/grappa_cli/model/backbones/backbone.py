"""The frozen backbone M: its interface, its configuration and the provider resolver.

A :class:`Backbone` is a frozen feature extractor cut into ``L`` *adaptable layers*. Grappa
never looks inside a layer; it only needs each layer's output written as a sum of two
tensors, ``output = base + branch``:

* for a ViT block, ``base`` is x~ = x + attn branch and ``branch`` is y = MLP branch of x~
  (paper eq. 1), so the block output is h_bar = x~ + y;
* for a CNN stage (:mod:`grappa_cli.model.backbones.cnn`), ``base`` is the stage output and ``branch``
  is zero: the adaptors then act as residual adaptors after each stage.

The Grappa layer (:mod:`grappa_cli.model.layer`) turns ``(base, branch)`` into
``base + (branch + sum_i alpha_i A_i(base + branch))``, which is the paper's
``h = F(h_bar, U) + x~`` with ``U_i = A_i(h_bar) + y``.

Tensor layout between layers is *channel-last*: ``[B, *positions, D_l]`` (ViT tokens
``[B, T, D]``; a CNN provider permutes ``[B, C, H, W]`` to ``[B, H, W, C]`` inside
:meth:`Backbone.stem` / :meth:`Backbone.layer_parts` / :meth:`Backbone.head`). Fusion averages over
the positions (every dimension between batch and channel).

A backbone is frozen for its whole life: no parameter requires grad and ``train()``
never leaves eval mode, so dropout, drop-path and batch-norm statistics never change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from grappa_cli.errors import ConfigError, PluginError
from grappa_cli.suggest import did_you_mean

if TYPE_CHECKING:  # annotations only
    from grappa_cli.config import GrappaConfig
    from grappa_cli.config_sections import BackboneSection

#: The paper's backbone: DINO ViT-S/16 (section 4, "Implementation details").
DEFAULT_BACKBONE = "vit_small_patch16_224.dino"

#: Seed of the random weights built with ``pretrained = false``: every process builds the
#: same random backbone, so features, adaptors and evaluations made in separate runs agree.
RANDOM_INIT_SEED = 0


@dataclass
class BackboneSpec:
    """What to build: the ``[backbone]`` section of ``grappa.toml``.

    ``weights`` is an absolute path (a relative path in ``grappa.toml`` is resolved against
    the file's directory) or ``None``; ``config_path`` only serves error messages.
    """

    name: str = DEFAULT_BACKBONE
    provider: str = "auto"
    pretrained: bool = True
    weights: Path | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: side of the preprocessed images; 0 keeps the model's own (``backbone.input_size``)
    input_size: int = 0
    config_path: Path | None = None

    @classmethod
    def from_config(cls, source: Any) -> BackboneSpec:
        """Build from a ``GrappaConfig``, its ``backbone`` section, or a plain dict."""
        config_path = getattr(source, "path", None)
        if hasattr(source, "sections"):  # a GrappaConfig
            values = dict(source.backbone.values)
        elif hasattr(source, "values") and isinstance(source.values, dict):  # a Section
            values = dict(source.values)
        elif isinstance(source, Mapping):
            values = dict(source)
        else:
            raise TypeError(f"cannot build a BackboneSpec from {type(source).__name__}")
        weights = values.get("weights") or None
        if weights is not None:
            weights = Path(weights).expanduser()
            if not weights.is_absolute() and config_path is not None:
                weights = Path(config_path).parent / weights
        return cls(
            name=values.get("name", DEFAULT_BACKBONE),
            provider=values.get("provider", "auto"),
            pretrained=bool(values.get("pretrained", True)),
            weights=weights,
            kwargs=dict(values.get("kwargs") or {}),
            input_size=int(values.get("input_size") or 0),
            config_path=Path(config_path) if config_path else None,
        )

    @property
    def where(self) -> str:
        """The config file to name in messages."""
        return str(self.config_path) if self.config_path else "grappa.toml"

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form (stored in checkpoint metadata and provenance)."""
        return {
            "name": self.name,
            "provider": self.provider,
            "pretrained": self.pretrained,
            "weights": str(self.weights) if self.weights else "",
            "kwargs": dict(self.kwargs),
            "input_size": self.input_size,
        }


class Backbone(nn.Module):
    """A frozen feature extractor split into adaptable layers (see the module docstring).

    Subclasses set the attributes below, implement :meth:`stem`, :meth:`layer_parts` and
    :meth:`head`, and call :meth:`freeze` at the end of ``__init__``.

    Attributes:
        name: the model name it was built from (e.g. ``vit_small_patch16_224.dino``).
        model_id: stable identity, ``"<name>@<sha256 of the weights, 16 hex>"``; adaptor and
            fusion checkpoints record it and refuse to load onto another backbone.
        embed_dim: D of the image representation ``z``.
        layer_dims: channel width D_l of each adaptable layer's output.
        data_config: timm data config (``input_size``, ``interpolation``, ``mean``, ``std``,
            ``crop_pct``, ``crop_mode``) that preprocessing must follow.
        any_input_size: whether images of another side than ``data_config`` says can be fed
            (CNNs with global pooling: yes; ViTs with fixed position embeddings: no).
    """

    any_input_size: bool = False
    name: str
    model_id: str
    embed_dim: int
    layer_dims: tuple[int, ...]
    data_config: dict[str, Any]

    @property
    def num_layers(self) -> int:
        """L, the number of adaptable layers."""
        return len(self.layer_dims)

    def stem(self, images: torch.Tensor, **layer_kwargs: Any) -> torch.Tensor:
        """Everything before the first adaptable layer: images -> ``[B, *positions, D_0]``."""
        raise NotImplementedError

    def layer_parts(
        self, index: int, x: torch.Tensor, **layer_kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run layer ``index`` on ``x``; return ``(base, branch)`` with output ``base + branch``.

        ``base + branch`` (in this order, one float addition) must be bit-identical to the
        layer's own output: that is what lets zero-initialised adaptors reproduce the backbone.
        """
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the last adaptable layer: final norm and pooling -> ``[B, embed_dim]``."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, **layer_kwargs: Any) -> torch.Tensor:
        """The plain backbone's representation z (subclasses may call their library's own path)."""
        x = self.stem(images, **layer_kwargs)
        for index in range(self.num_layers):
            base, branch = self.layer_parts(index, x, **layer_kwargs)
            x = base + branch
        return self.head(x)

    def freeze(self) -> None:
        """Make every parameter constant and switch to eval mode, for good."""
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever a parent module asks: the backbone is never trained."""
        return super().train(False)

    def current_model_id(self) -> str:
        """The ``model_id`` of the weights held *now*, recomputed from them.

        ``model_id`` is computed once, when the backbone is built; a caller that loads other
        weights into a built backbone (a stand-alone model file) recomputes it here to check
        the weights are the ones recorded. Providers hash their wrapped library model
        (``self.model``); one that hashes something else overrides this method.
        """
        return make_model_id(self.name, getattr(self, "model", self))

    def describe(self) -> dict[str, object]:
        """What checkpoints record about the backbone they were trained on."""
        return {
            "model_id": self.model_id,
            "name": self.name,
            "embed_dim": self.embed_dim,
            "num_layers": self.num_layers,
            "layer_dims": list(self.layer_dims),
        }


@runtime_checkable
class BackboneProvider(Protocol):
    """A plugin object that builds backbones (registered with ``register_backbones``)."""

    name: str
    description: str

    def supports(self, model_name: str) -> bool:
        """Whether :meth:`build` can build ``model_name`` (used by ``provider = "auto"``)."""
        ...

    def build(self, spec: BackboneSpec) -> Backbone:
        """Build the frozen backbone described by ``spec``."""
        ...


# Optional provider method: ``model_names() -> list[str]``, the names it knows, used for
# "did you mean" suggestions when no provider supports a name.


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the module's state dict (names, dtypes, shapes and bytes, sorted by name)."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_model_id(name: str, module: nn.Module) -> str:
    """``"<name>@<first 16 hex digits of the weights digest>"``."""
    return f"{name}@{weights_digest(module)[:16]}"


def _providers_from_plugins() -> Mapping[str, BackboneProvider]:
    from grappa_cli import plugins

    return plugins.registry("backbones").items


def resolve_provider(
    spec: BackboneSpec, providers: Mapping[str, BackboneProvider] | None = None
) -> BackboneProvider:
    """The provider named by ``spec.provider``, or with ``"auto"`` the first that supports the name."""
    providers = _providers_from_plugins() if providers is None else providers
    listed = ", ".join(providers) or "none"
    if spec.provider != "auto":
        try:
            return providers[spec.provider]
        except KeyError:
            raise PluginError(
                f"{spec.where}: backbone.provider: unknown backbone provider {spec.provider!r}"
                f"{did_you_mean(spec.provider, providers)}; installed: {listed}",
                hint="see `grappa plugins`",
            ) from None
    for provider in providers.values():
        if provider.supports(spec.name):
            return provider
    known: list[str] = []
    for provider in providers.values():  # optional: providers may list the names they know
        names = getattr(provider, "model_names", None)
        known.extend(names() if callable(names) else [])
    raise ConfigError(
        f"{spec.where}: backbone.name: no backbone provider supports {spec.name!r}"
        f"{did_you_mean(spec.name, known)} (installed: {listed})",
        hint="choose a supported model name, set backbone.provider, or install a plugin that provides it",
    )


def build_backbone(
    spec_or_config: BackboneSpec | GrappaConfig | BackboneSection | Mapping[str, object],
    providers: Mapping[str, BackboneProvider] | None = None,
) -> Backbone:
    """Build the frozen backbone of a ``BackboneSpec``, ``GrappaConfig``, section or dict.

    ``providers`` defaults to those registered through the ``register_backbones`` hook.
    """
    spec = (
        spec_or_config
        if isinstance(spec_or_config, BackboneSpec)
        else BackboneSpec.from_config(spec_or_config)
    )
    provider = resolve_provider(spec, providers)
    backbone = provider.build(spec)
    if not isinstance(backbone, Backbone):
        raise PluginError(
            f"backbone provider {provider.name!r} returned {type(backbone).__name__}, not a Backbone",
            hint="fix the plugin",
        )
    if spec.input_size:
        _override_input_size(backbone, spec)
    return backbone


def _override_input_size(backbone: Backbone, spec: BackboneSpec) -> None:
    """Preprocess to ``spec.input_size`` pixels (CNNs), keeping crop ratio and normalisation."""
    side = int(spec.input_size)
    current = int(backbone.data_config["input_size"][-1])
    if side == current:
        return
    if not backbone.any_input_size:
        raise ConfigError(
            f"{spec.where}: backbone.input_size: {backbone.name} only takes {current} px images",
            hint="remove backbone.input_size (for a ViT, set img_size in backbone.kwargs instead)",
        )
    backbone.data_config = {**backbone.data_config, "input_size": (3, side, side)}
