"""Whole-model files: every trainable tensor of a ``GrappaModel`` in one safetensors file.

Used for models whose adaptors are not stored adaptor sets (the random baselines trained
together with their fusion) and by ``grappa export`` (which also stores the backbone's
weights, so the file works without the project). Nothing is pickled; the header records the
backbone spec, the data config, N, D', each layer's bottleneck ``D'_l`` (narrow CNN stages
use ``min(D', D_l - 1)``), the fusion kind, the strength (the share of the fused adaptation
the model applies) and the caller's provenance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from grappa_cli.errors import GrappaError, StoreError
from grappa_cli.model.adaptor import Adaptor, AdaptorSet
from grappa_cli.model.backbones.backbone import Backbone
from grappa_cli.model.checkpoint import header_strength
from grappa_cli.model.grappa import GrappaModel
from grappa_cli.storage.fsutil import publish, temporary_sibling

BUNDLE_FORMAT = "grappa-model"
FORMAT_VERSION = "1"


def describe(model: GrappaModel) -> dict[str, Any]:
    """The structure needed to rebuild ``model``'s layers: N, D', every ``D'_l``, fusion kind.

    ``bottleneck`` is the configured D' (that of the widest layers); ``bottlenecks`` lists
    each layer's own width, which is smaller on CNN stages narrower than D' + 1.
    """
    if not model.layers:
        return {"num_sets": 0, "bottleneck": 0, "bottlenecks": [], "fusion": "", "strength": 1.0}
    widths = [layer.bank.bottleneck for layer in model.grappa_layers()]
    return {
        "num_sets": model.num_sets,
        "bottleneck": max(widths),
        "bottlenecks": widths,
        # also for one set: attention fused over a single set still has Q, K and a scale to load
        "fusion": model.fusion_kind or "",
        "strength": model.strength,
    }


def save_bundle(
    path: Path, model: GrappaModel, *, backbone_spec: Mapping[str, object] | None = None,
    include_backbone: bool = False, provenance: Mapping[str, object] | None = None,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Write ``model`` (its layers; with ``include_backbone`` the backbone too) atomically."""
    backbone = model.backbone
    tensors = {f"layers.{k}": v.detach().cpu().contiguous() for k, v in model.layers.state_dict().items()}
    if include_backbone:
        tensors.update({f"backbone.{k}": v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()})
    meta = {
        "format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "model_id": backbone.model_id,
        "backbone": json.dumps(backbone.describe()), "backbone_spec": json.dumps(backbone_spec or {}),
        "data_config": json.dumps(_jsonable(backbone.data_config)),
        "layer_dims": json.dumps(list(backbone.layer_dims)), "includes_backbone": str(include_backbone).lower(),
        **{k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in describe(model).items()},
        "grappa": json.dumps(provenance or {}), "extra": json.dumps(extra or {}),
    }
    tmp = temporary_sibling(Path(path))
    try:
        save_file(tensors, str(tmp), metadata=meta)
        publish(tmp, Path(path))
    finally:
        tmp.unlink(missing_ok=True)


def read_bundle_metadata(path: Path) -> dict[str, Any]:
    """The header of a model file, JSON fields decoded (no tensors are read)."""
    path = Path(path)
    if not path.is_file():
        raise GrappaError(f"{path} does not exist", hint="pass a file written by `grappa export`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:
        raise GrappaError(f"{path} is not a readable safetensors file ({exc})",
                          hint="check the file, or export the model again") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise GrappaError(f"{path} is not a grappa model file (format {meta.get('format')!r})",
                          hint="pass a file written by `grappa export` or `grappa fuse`")
    for key in ("backbone", "backbone_spec", "data_config", "layer_dims", "grappa", "extra"):
        meta[key] = json.loads(meta.get(key) or "{}")
    for key in ("num_sets", "bottleneck"):
        meta[key] = int(meta[key])
    meta["bottlenecks"] = [int(b) for b in json.loads(meta["bottlenecks"])] if meta.get("bottlenecks") else None
    meta["includes_backbone"] = meta.get("includes_backbone") == "true"
    meta["strength"] = header_strength(path, meta, "export the model again")
    return meta


def empty_model(
    backbone: Backbone, num_sets: int, bottleneck: int | Sequence[int], fusion: str,
    attention_init: str = "uniform",
) -> GrappaModel:
    """A model of the given structure with zero/untrained layers, ready for ``load_state_dict``.

    ``bottleneck``: D' (each layer then gets ``min(D', D_l - 1)``, as at training time) or
    the list of every layer's ``D'_l``.
    """
    if num_sets == 0:
        return GrappaModel.backbone_only(backbone)
    if isinstance(bottleneck, int):
        sets = [AdaptorSet.new(backbone.layer_dims, bottleneck, seed=0) for _ in range(num_sets)]
    else:
        widths = list(bottleneck)
        if len(widths) != backbone.num_layers:
            raise ValueError(f"{len(widths)} bottleneck widths for a backbone of {backbone.num_layers} layers")
        sets = [AdaptorSet([Adaptor(d, b) for d, b in zip(backbone.layer_dims, widths, strict=True)])
                for _ in range(num_sets)]
    return GrappaModel.with_adaptor_sets(backbone, sets, fusion=fusion or None, attention_init=attention_init)


def _layer_bottlenecks(meta: dict[str, Any], tensors: dict[str, torch.Tensor], num_layers: int) -> list[int] | int:
    """Every layer's ``D'_l``: from the header, else from the stored tensors' shapes.

    Files written before the header listed ``bottlenecks`` recorded only one width (for CNNs
    that of layer 0, not D'), so the shapes of ``layers.<l>.bank.down_weight`` are the truth.
    """
    if meta.get("bottlenecks"):
        return list(meta["bottlenecks"])
    shapes = [tensors.get(f"layers.{index}.bank.down_weight") for index in range(num_layers)]
    stored = [t for t in shapes if t is not None]
    if len(stored) == len(shapes):
        return [int(t.shape[1]) for t in stored]
    return int(meta["bottleneck"])


def load_layers(
    path: Path, backbone: Backbone, tensors: dict[str, torch.Tensor] | None = None,
) -> tuple[GrappaModel, dict[str, Any]]:
    """Rebuild a bundle's model on ``backbone`` (which must be the one it was saved with).

    ``tensors``: the file's tensors when the caller already read them (saves a second read).
    """
    meta = read_bundle_metadata(path)
    if meta["model_id"] != backbone.model_id:
        raise StoreError(f"{path} was saved for backbone {meta['model_id']}, not {backbone.model_id}",
                         hint="use the backbone it was trained with, or retrain it with --force")
    tensors = load_file(str(path), device="cpu") if tensors is None else tensors
    widths = _layer_bottlenecks(meta, tensors, backbone.num_layers) if meta["num_sets"] else 0
    layer_state = {k[len("layers."):]: v for k, v in tensors.items() if k.startswith("layers.")}
    # attention fusion that starts at Grappa-avg carries a logit scale; the literal eq. 3 has none
    init = "uniform" if any(k.endswith("fusion.logit_scale") for k in layer_state) else "linear"
    fusion = meta.get("fusion", "")
    if not fusion and any(k.endswith("fusion.query.weight") for k in layer_state):
        fusion = "attention"  # one attention-fused set, saved before the header named its fusion
    model = empty_model(backbone, meta["num_sets"], widths, fusion, init)
    model.layers.load_state_dict(layer_state, strict=True)
    model.set_strength(meta["strength"])
    return model.to(_device_of(backbone)), meta


def load_backbone_state(path: Path, backbone: Backbone, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Copy a bundle's stored backbone weights into ``backbone`` (exported files).

    ``backbone.model_id`` is left as built: the caller recomputes it from the loaded weights
    (:meth:`Backbone.current_model_id`) and compares it with the recorded one.
    """
    tensors = load_file(str(path), device="cpu") if tensors is None else tensors
    state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    if not state:
        raise GrappaError(f"{path} holds no backbone weights",
                          hint="export it again without --no-backbone, or build the backbone yourself")
    try:
        with torch.no_grad():
            backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        raise GrappaError(f"the backbone weights in {path} do not fit the rebuilt {backbone.name!r} ({first})",
                          hint="load it with the timm version it was exported with (see its metadata)") from None


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _device_of(backbone: Backbone) -> torch.device:
    param = next(backbone.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
