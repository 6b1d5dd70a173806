"""Creating timm models for backbone providers: seeded random weights, hub weights, key checks.

Every timm-based provider (ViTs, CNNs) builds its model the same way: ``num_classes=0``
(no classifier), the user's ``backbone.kwargs``, random weights drawn from a fixed seed so
that separate processes build the same random model, and hub weights only from the local
cache or a reachable hub (see :mod:`grappa_cli.model.backbones.weights`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from grappa_cli.errors import ConfigError, GrappaError
from grappa_cli.model.backbones.backbone import RANDOM_INIT_SEED, BackboneSpec
from grappa_cli.model.backbones.weights import cached_hub_file, ensure_hub_reachable, how_to_pass_weights


def create_timm_model(
    spec: BackboneSpec, pretrained: bool, *, architecture: str | None = None, **extra: object
) -> nn.Module:
    """``timm.create_model`` with ``num_classes=0``, the spec's kwargs and a fixed seed.

    ``architecture`` builds another timm name than ``spec.name`` (messages still name the
    spec's key). timm's errors about kwargs and names become ConfigErrors naming the key.
    """
    import timm

    kwargs = {**spec.kwargs, "num_classes": 0, **extra}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return timm.create_model(architecture or spec.name, pretrained=pretrained, **kwargs)
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


def create_hub_model(spec: BackboneSpec) -> nn.Module:
    """The timm model with its hub weights: from the local cache, else a (probed) download."""
    import timm

    pretrained_cfg = timm.models.get_pretrained_cfg(spec.name)
    cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    cached = cached_hub_file(cfg)
    if cached is None:
        ensure_hub_reachable(spec.name, cfg, where=spec.where)
    try:
        if cached:
            return create_timm_model(spec, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
        return create_timm_model(spec, pretrained=True)
    except (OSError, RuntimeError) as exc:
        raise GrappaError(
            f"cannot load pretrained weights for {spec.name!r} ({type(exc).__name__}: {exc})",
            hint=how_to_pass_weights(spec.where),
        ) from None


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The classifier module names of a timm model (``head``, ``fc``, ``classifier``...)."""
    classifiers = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    return (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)


def load_exact(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: Path | str,
    name: str,
    drop_prefixes: Iterable[str] = (),
) -> None:
    """Load ``state`` requiring every key of ``model`` to be present with its shape.

    Keys under ``drop_prefixes`` (classifier heads the backbone does not have) are ignored;
    any other missing, unexpected or mis-shaped key fails with one line listing them.
    """
    drop = tuple(f"{p}." for p in drop_prefixes)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(drop)}
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
