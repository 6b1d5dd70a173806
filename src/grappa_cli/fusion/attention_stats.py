"""What attention fusion is doing while it trains: per-layer norms, scale, entropy and mean alpha.

A fused model that never leaves its start (or leaves it for a random one) looks like a working
one from its loss curve alone. These numbers, logged to the run's ``metrics.jsonl`` before
training and after every epoch (records with ``"kind": "attention"``), show whether it moves:

* ``q_norm`` / ``k_norm``: Frobenius norms of the layer's Q and K projections;
* ``logit_scale``: the per-layer scale of the logits (``None`` for the literal eq. 3 start);
* ``entropy``: mean over probe images of the attention's entropy divided by ``log N`` (1 = uniform,
  i.e. Grappa-avg; 0 = one set per image);
* ``mean_alpha``: the attention weight of each set averaged over the probe images, in the order of
  the record's ``sets`` (the fused sets' names, so TensorBoard can label each curve).

The probe is a fixed batch of training images in the evaluation view, the same every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch
    from torch import nn

PROBE_IMAGES = 64


class LayerSummary(TypedDict):
    """One layer's entry in an attention record (see the module docstring)."""

    layer: int
    q_norm: float
    k_norm: float
    logit_scale: float | None
    entropy: float
    mean_alpha: list[float]


def probe_batch(paths: Sequence[str], data_config: dict[str, Any], count: int = PROBE_IMAGES) -> torch.Tensor | None:
    """The first ``count`` readable training images in the evaluation view, ``[B, 3, H, W]``."""
    import torch

    from grappa_cli.data.images import decode_min_side, load_rgb
    from grappa_cli.data.transforms import eval_transform

    transform = eval_transform(data_config)
    min_side = decode_min_side(data_config)
    images = []
    for path in paths:
        try:
            images.append(transform(load_rgb(str(path), min_side=min_side)))
        except Exception:  # an unreadable image is simply not part of the probe
            continue
        if len(images) >= count:
            break
    return torch.stack(images) if images else None


def attention_summary(model: nn.Module, images: torch.Tensor) -> list[LayerSummary]:
    """Per-layer statistics of ``model``'s attention fusion on ``images`` (empty for mean fusion)."""
    import torch

    layers = [layer.fusion for layer in getattr(model, "layers", [])]
    if not layers or getattr(layers[0], "kind", "") != "attention":
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(p.device for p in model.parameters())
            _, alpha = model(images.to(device), return_attention=True)  # [B, L, N]
    finally:
        model.train(was_training)
    alpha = alpha.float().cpu()
    n = alpha.shape[-1]
    entropy = -(alpha.clamp_min(1e-12).log() * alpha).sum(dim=-1) / (math.log(n) if n > 1 else 1.0)
    summary: list[LayerSummary] = []
    for index, fusion in enumerate(layers):
        scale = getattr(fusion, "logit_scale", None)
        summary.append({
            "layer": index,
            "q_norm": float(fusion.query.weight.detach().norm()),
            "k_norm": float(fusion.key.weight.detach().norm()),
            "logit_scale": float(scale.detach().reshape(-1)[0]) if scale is not None else None,
            "entropy": float(entropy[:, index].mean()),
            "mean_alpha": [round(float(a), 6) for a in alpha[:, index].mean(dim=0)],
        })
    return summary


class AttentionLogger:
    """Appends the attention summary to a fusion run's metrics log before training and after each epoch."""

    def __init__(self, run_dir: Path, paths: Sequence[str], data_config: dict[str, Any],
                 sets: Sequence[str] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.paths = list(paths)
        self.data_config = data_config
        self.sets = list(sets)
        self._probe: torch.Tensor | None = None

    def _log(self, model: nn.Module, epoch: int, phase: str) -> None:
        from grappa_cli.train import distributed
        from grappa_cli.train.checkpoint import RunDir

        if not distributed.is_main():
            return
        if self._probe is None:
            self._probe = probe_batch(self.paths, self.data_config)
        if self._probe is None:
            return
        inner = getattr(model, "module", model)
        summary = attention_summary(getattr(inner, "model", inner), self._probe)
        if summary:
            record: dict[str, object] = {"kind": "attention", "epoch": epoch, "phase": phase, "layers": summary}
            if len(self.sets) == len(summary[0]["mean_alpha"]):
                record["sets"] = self.sets
            RunDir(self.run_dir).append_metrics(record)

    def on_epoch_start(self, epoch: int, objective: nn.Module) -> None:
        if epoch == 0:
            self._log(objective, 0, "start")

    def on_epoch_end(self, epoch: int, objective: nn.Module, record: Mapping[str, object]) -> None:
        self._log(objective, epoch, "end")


def read_attention_log(run_dir: Path) -> list[dict[str, Any]]:
    """The attention records of a fusion run's ``metrics.jsonl``, in order (``[]`` when none)."""
    from grappa_cli.train.checkpoint import RunDir

    return [r for r in RunDir(Path(run_dir)).read_metrics() if r.get("kind") == "attention"]


def epoch_overview(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per logged point: layer means of the statistics, and mean alpha per set over layers."""
    rows = []
    for record in records:
        layers = record.get("layers") or []
        if not layers:
            continue
        scales = [layer["logit_scale"] for layer in layers if layer.get("logit_scale") is not None]
        alphas = [layer["mean_alpha"] for layer in layers]
        rows.append({
            "epoch": int(record.get("epoch", 0)) + (1 if record.get("phase") == "end" else 0),
            "entropy": sum(layer["entropy"] for layer in layers) / len(layers),
            "logit_scale": sum(scales) / len(scales) if scales else None,
            "q_norm": sum(layer["q_norm"] for layer in layers) / len(layers),
            "k_norm": sum(layer["k_norm"] for layer in layers) / len(layers),
            "mean_alpha": [sum(col) / len(col) for col in zip(*alphas, strict=True)],
        })
    return rows
