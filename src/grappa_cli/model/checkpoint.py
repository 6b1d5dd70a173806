"""Adaptor-set and fusion checkpoints: safetensors files with their metadata in the header.

Nothing is ever pickled. Each file's header metadata (strings; JSON where structured) is::

    format          "grappa-adaptor-set" | "grappa-fusion"
    format_version  "1"
    model_id        the backbone's identity (name @ weights hash); loading elsewhere fails
    backbone        JSON: model_id, name, embed_dim, num_layers, layer_dims
    layer_dims      JSON list of D per adapted layer
    num_sets        N (1 for an adaptor set)
    bottleneck      D' (adaptor sets); layer l has min(D', D_l - 1) (narrow CNN stages)
    k               clusters of the pseudo-label set the adaptors were trained on ("" if none)
    kind            "mean" | "attention" | "router" (fusion)
    adaptor_sets    JSON list naming the fused sets, in order (fusion)
    config          JSON of the settings the caller used
    grappa          JSON provenance record given by the caller (read by ``grappa_cli.records.artifacts``)

Files are written to a temporary sibling and renamed into place, so a reader sees the old
file or the complete new one, never a partial write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from grappa_cli.errors import GrappaError, StoreError
from grappa_cli.model.adaptor import Adaptor, AdaptorSet, layer_bottlenecks
from grappa_cli.model.backbones.backbone import Backbone
from grappa_cli.model.fusion import AttentionFusion, MeanFusion, RouterFusion
from grappa_cli.storage import diskerrors
from grappa_cli.storage.fsutil import publish, temporary_sibling

FORMAT_VERSION = "1"
ADAPTOR_FORMAT = "grappa-adaptor-set"
FUSION_FORMAT = "grappa-fusion"
_JSON_KEYS = ("backbone", "layer_dims", "config", "grappa", "adaptor_sets")


@dataclass
class FusionCheckpoint:
    """A loaded fusion checkpoint: the L fusion layers and what the header says about them."""

    kind: str
    layers: list[nn.Module]
    num_sets: int
    adaptor_sets: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: share of the fused adaptation the model applies (files written before it existed: 1)
    strength: float = 1.0

    @property
    def provenance(self) -> dict[str, Any] | None:
        return self.metadata.get("grappa")


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        diskerrors.expect(sum(v.numel() * v.element_size() for v in cpu.values()))
        save_file(cpu, str(tmp), metadata=metadata)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _header(
    fmt: str,
    backbone: Backbone,
    provenance: Mapping[str, object] | None,
    config: Mapping[str, object] | None,
    **extra: object,
) -> dict[str, str]:
    meta = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "model_id": backbone.model_id,
        "backbone": backbone.describe(),
        "layer_dims": list(backbone.layer_dims),
        "config": config or {},
        "grappa": provenance or {},
        **extra,
    }
    return {
        k: json.dumps(v, sort_keys=True, default=str) if k in _JSON_KEYS else str(v) for k, v in meta.items()
    }


def read_metadata(path: Path) -> dict[str, Any]:
    """The header metadata of a grappa checkpoint, JSON fields decoded (no tensors read)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist", hint="run the stage that creates it")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except Exception as exc:
        raise GrappaError(
            f"{path} is not a readable safetensors file ({exc})",
            hint="delete it and re-run the stage that wrote it",
        ) from None
    meta: dict[str, Any] = dict(raw)
    for key in _JSON_KEYS:
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


def _check_header(path: Path, meta: Mapping[str, object], fmt: str, backbone: Backbone) -> None:
    if meta.get("format") != fmt:
        raise GrappaError(
            f"{path} is not a {fmt} file (format {meta.get('format')!r})", hint="pass the right checkpoint"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise GrappaError(
            f"{path} has format version {meta.get('format_version')!r}, this grappa reads {FORMAT_VERSION!r}",
            hint="re-run the stage that wrote it with --force",
        )
    problems = []
    dims = [int(d) for d in cast("list[int]", meta.get("layer_dims", []))]  # a JSON list in the header
    if len(dims) != backbone.num_layers:
        problems.append(f"{len(dims)} layers vs {backbone.num_layers}")
    elif dims != list(backbone.layer_dims):
        problems.append(f"layer widths {dims} vs {list(backbone.layer_dims)}")
    if meta.get("model_id") != backbone.model_id:
        problems.append(f"backbone {meta.get('model_id')!r} vs the configured {backbone.model_id!r}")
    if problems:
        raise StoreError(
            f"{path} was made for another backbone ({'; '.join(problems)})",
            hint="configure the backbone it was trained on, or re-run the stage that wrote it with --force",
        )


def save_adaptor_set(
    path: Path,
    adaptor_set: AdaptorSet,
    *,
    backbone: Backbone,
    provenance: Mapping[str, object] | None = None,
    k: int | None = None,
    config: Mapping[str, object] | None = None,
) -> None:
    """Write one adaptor set (the L adaptors trained on one pseudo-label set) atomically."""
    if adaptor_set.layer_dims != backbone.layer_dims:
        raise ValueError(
            f"adaptor set widths {adaptor_set.layer_dims} do not match the backbone {backbone.layer_dims}"
        )
    if adaptor_set.bottlenecks != layer_bottlenecks(adaptor_set.bottleneck, adaptor_set.layer_dims):
        raise ValueError(
            f"adaptor set bottlenecks {adaptor_set.bottlenecks} do not follow D'_l = min(D', D_l - 1) "
            f"for D' = {adaptor_set.bottleneck}"
        )
    k = adaptor_set.k if k is None else k
    meta = _header(
        ADAPTOR_FORMAT,
        backbone,
        provenance,
        config,
        num_sets=1,
        bottleneck=adaptor_set.bottleneck,
        k="" if k is None else k,
    )
    _write(Path(path), adaptor_set.state_dict(), meta)


def load_adaptor_set(path: Path, backbone: Backbone) -> AdaptorSet:
    """Read an adaptor set, checking it was trained on ``backbone``; placed on its device."""
    path = Path(path)
    meta = read_metadata(path)
    _check_header(path, meta, ADAPTOR_FORMAT, backbone)
    bottleneck = int(meta["bottleneck"])
    k = int(meta["k"]) if meta.get("k") else None
    widths = layer_bottlenecks(bottleneck, backbone.layer_dims)
    adaptor_set = AdaptorSet(
        [Adaptor(d, b) for d, b in zip(backbone.layer_dims, widths, strict=True)], k=k, metadata=meta
    )
    _load_into(path, adaptor_set)
    return adaptor_set.to(_device_of(backbone))


def save_fusion(
    path: Path,
    fusion_layers: Sequence[nn.Module],
    *,
    backbone: Backbone,
    provenance: Mapping[str, object] | None = None,
    adaptor_sets: Sequence[str] = (),
    config: Mapping[str, object] | None = None,
    strength: float = 1.0,
) -> None:
    """Write the L fusion layers of a model (Q and K for attention; none for mean) atomically.

    ``strength`` (the share of the fused adaptation the model applies) goes into the header.
    """
    layers = list(fusion_layers)
    if len(layers) != backbone.num_layers:
        raise ValueError(f"{len(layers)} fusion layers for a backbone of {backbone.num_layers}")
    kinds = {cast(str, layer.kind) for layer in layers}
    counts = {cast(int, layer.num_sets) for layer in layers}
    inits = {getattr(layer, "init", None) for layer in layers}
    if len(kinds) != 1 or len(counts) != 1:
        raise ValueError(f"fusion layers must share kind and N (got {sorted(kinds)}, {sorted(counts)})")
    if adaptor_sets and len(adaptor_sets) != layers[0].num_sets:
        raise ValueError(f"{len(adaptor_sets)} adaptor set names for N = {layers[0].num_sets}")
    tensors = {
        f"layers.{i}.{name}": t for i, layer in enumerate(layers) for name, t in layer.state_dict().items()
    }
    meta = _header(
        FUSION_FORMAT,
        backbone,
        provenance,
        config,
        kind=kinds.pop(),
        num_sets=counts.pop(),
        adaptor_sets=list(adaptor_sets),
        strength=float(strength),
        **({"attention_init": inits.pop()} if len(inits) == 1 and None not in inits else {}),
    )
    _write(Path(path), tensors, meta)


def load_fusion(path: Path, backbone: Backbone, *, num_sets: int | None = None) -> FusionCheckpoint:
    """Read fusion layers saved for ``backbone`` (and, if given, for ``num_sets`` adaptor sets)."""
    path = Path(path)
    meta = read_metadata(path)
    _check_header(path, meta, FUSION_FORMAT, backbone)
    n = int(meta["num_sets"])
    if num_sets is not None and n != num_sets:
        raise StoreError(
            f"{path} fuses {n} adaptor sets, the model has {num_sets}",
            hint="load the adaptor sets it was trained with, or re-run `grappa fuse` with --force",
        )
    kind = meta.get("kind")
    if kind == "mean":
        layers: list[nn.Module] = [MeanFusion(n) for _ in backbone.layer_dims]
    elif kind == "attention":
        # files written before the start was configurable hold the literal eq. 3 ("linear")
        init = str(meta.get("attention_init") or "linear")
        layers = [AttentionFusion(d, n, init=init) for d in backbone.layer_dims]
    elif kind == "router":  # the number of sources is read from the tensors' shapes
        layers = [RouterFusion(d, n) for d in backbone.layer_dims]
    else:
        raise GrappaError(
            f"{path} holds an unknown fusion kind {kind!r}", hint="re-run `grappa fuse` with --force"
        )
    holder = nn.ModuleDict({"layers": nn.ModuleList(layers)})
    _load_into(path, holder)
    device = _device_of(backbone)
    return FusionCheckpoint(
        kind, [layer.to(device) for layer in layers], n, list(meta.get("adaptor_sets") or []), meta,
        strength=header_strength(path, meta, "delete it and re-run the stage that wrote it"),
    )


def header_strength(path: Path, meta: Mapping[str, object], hint: str) -> float:
    """A header's strength (1, the paper's model, for files written before it was recorded).

    Shared by fusion checkpoints and whole-model bundles; a value outside [0, 1] is refused.
    """
    try:
        strength = float(cast("str | float", meta.get("strength") or 1.0))  # a header string or a number
    except ValueError:
        strength = -1.0
    if not 0.0 <= strength <= 1.0:
        raise GrappaError(f"{path} records a strength of {meta.get('strength')!r}, not a number in [0, 1]",
                          hint=hint)
    return strength


def _load_into(path: Path, module: nn.Module) -> None:
    tensors = load_file(str(path), device="cpu")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise GrappaError(
            f"{path} does not match its own header ({first})",
            hint="delete it and re-run the stage that wrote it",
        ) from None


def _device_of(backbone: Backbone) -> torch.device:
    param = next(backbone.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
