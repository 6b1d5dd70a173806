"""``grappa fuse``: fuse the adaptor sets into one model M* (Step 3, section 3.5).

The backbone and the adaptor sets stay frozen; a fusion-strategy plugin builds and trains
the fusion layers (or, for the random baselines, adaptors and fusion together). The result
is saved to ``checkpoints/fusion/<strategy>.safetensors`` with its provenance: the fusion
layers plus the names of the fused sets, or, when adaptors were trained, the whole model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from grappa_cli import plugins
from grappa_cli.console import NullReporter, Reporter
from grappa_cli.errors import GrappaError, StoreError
from grappa_cli.fusion.base import FusionContext, FusionOptions, WarmStart, artifact_params
from grappa_cli.pipeline.freshness import record_fields
from grappa_cli.project import Project
from grappa_cli.records import artifacts
from grappa_cli.records import provenance as prov

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.fusion.base import FusionStrategy
    from grappa_cli.model.backbones.backbone import Backbone

FEATURES = "features/train"


@dataclass
class FuseResult:
    strategy: str
    path: str
    sets: list[str]
    skipped: bool
    uses_labels: bool
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0


def stored_sets(project: Project) -> list[str]:
    """Names of complete adaptor sets (``k256``...), by increasing k."""
    from grappa_cli.records import increments

    names = [p.stem for p in project.adaptors_dir.glob("*.safetensors")]
    names = [n for n in names if artifacts.fingerprint(project, f"adaptors/{n}") is not None]
    return sorted(names, key=increments.set_sort_key)


def fuse(project: Project, strategy_name: str, sets: list[str] | None, options: FusionOptions,
         reporter: Reporter | None = None) -> FuseResult:
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.model.bundle import save_bundle
    from grappa_cli.model.checkpoint import load_adaptor_set, save_fusion
    from grappa_cli.pipeline.freshness import require_current
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.train import distributed

    reporter = reporter or NullReporter()
    strategy = plugins.get("fusion_strategies", strategy_name)
    config = project.config()
    distributed.init_distributed()
    store = project.store()
    features = store.require_complete(FEATURES, "the training set's features", "grappa extract")
    available = stored_sets(project)
    if not available:
        raise StoreError("no adaptor sets yet", hint="run `grappa adapt`")
    names = [s if s.startswith("k") else f"k{s}" for s in (sets or available)]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise StoreError(f"no trained adaptor set {', '.join(unknown)}; available: {', '.join(available)}",
                         hint="run `grappa adapt --k ...` first")
    records = {n: require_current(project, f"adaptors/{n}", f"adaptor set {n}") for n in names}
    from grappa_cli.records import increments

    for n, rec in records.items():
        made_from = record_fields(rec, "inputs").get(FEATURES)
        if not increments.accepts(features, made_from if isinstance(made_from, str) else None):
            raise StoreError(f"adaptor set {n} was trained on another feature store (features/train changed)",
                             hint=f"rerun `grappa adapt --k {n[1:]} --force`")
    backbone = build_backbone(backbone_spec(config))
    adaptor_sets = [load_adaptor_set(artifacts.checkpoint_path(project, f"adaptors/{n}"), backbone) for n in names]

    params = artifact_params(strategy, config, options, names, backbone.model_id)
    inputs = {f"adaptors/{n}": str(records[n]["fingerprint"]) for n in names} | {FEATURES: features["fingerprint"]}
    path = artifacts.checkpoint_path(project, f"fusion/{strategy.name}")
    existing = artifacts.read_checkpoint_record(path)
    if existing and not options.force:
        if artifacts.judge(existing, params, inputs).state == "complete":
            return FuseResult(strategy.name, str(path), names, True, strategy.uses_labels,
                              existing.get("loss_curve", []))
        if not options.refresh:
            raise StoreError(f"{path.name} was made from other inputs or settings "
                             f"({prov.describe_mismatch(existing, params, inputs)})",
                             hint="rerun with --force to retrain it")

    paths = store.read(f"{FEATURES}/paths")[store.read(f"{FEATURES}/valid")]
    run_dir = project.runs_dir / f"fuse-{strategy.name}"
    from grappa_cli.pipeline.stages.cache import training_cache

    device = options.device or config.runtime.device
    context = FusionContext(project, config, store, backbone, names, adaptor_sets, [str(p) for p in paths],
                            options, params, run_dir, reporter,
                            find_cache=lambda: training_cache(project, store, reporter, device))
    warm = warm_start_source(project, config, strategy, names, existing, backbone) if not options.force else None
    if warm is not None:
        context.warm_start = warm
        from rich.markup import escape

        reporter.log(escape(f"fusion/{strategy.name} starts from the previous fused model over "
                            f"{', '.join(warm.set_names)} ([fuse] warm_start)"))
    outcome = strategy.train(context)
    outcome.model.set_strength(float(config.fuse.strength))  # trained at 1; saved with the configured share
    if distributed.is_main():
        from grappa_cli.fusion.attention_stats import epoch_overview, read_attention_log

        attention = epoch_overview(read_attention_log(run_dir))
        summary: dict[str, object] = {"strategy": strategy.name, "sets": len(names),
                                   "labels": "yes" if strategy.uses_labels else "no"}
        if attention:  # how far the attention moved from its start (entropy 1 = uniform, Grappa-avg)
            summary["entropy"] = f"{attention[0]['entropy']:.3f}->{attention[-1]['entropy']:.3f}"
        routing = outcome.info.get("routing")
        if routing:  # Grappa-R: each source's most weighed candidate
            summary["routes"] = " ".join(
                f"{source}->{routing['candidates'][int(np.argmax(row))]}"
                for source, row in zip(routing["sources"], routing["table"], strict=True))
        record = prov.record("fuse", params, inputs)
        record.update(complete=True, completed=prov.now(), loss_curve=outcome.epoch_losses,
                      uses_labels=strategy.uses_labels, seconds=outcome.seconds, info=_plain(outcome.info),
                      input="cache" if context.read_cache else "files", attention=attention, summary=summary,
                      trained_on={"images": len(paths), "rows": [0, len(store.read(f"{FEATURES}/valid"))]},
                      warm_start=None if warm is None else {"from": warm.fingerprint, "sets": warm.set_names,
                                                            "steps": float(config.fuse.warm_steps),
                                                            "scale": config.fuse.warm_scale})
        if outcome.trained_adaptors:
            save_bundle(path, outcome.model, provenance=record,
                        backbone_spec=backbone_spec(config).to_dict(), extra={"strategy": strategy.name})
        else:
            save_fusion(path, outcome.model.fusion_layers(), backbone=backbone, provenance=record,
                        adaptor_sets=names, config=params, strength=outcome.model.strength)
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    distributed.barrier()
    return FuseResult(strategy.name, str(path), names, False, strategy.uses_labels, outcome.epoch_losses,
                      outcome.seconds, outcome.images_per_second)


def warm_start_source(project: Project, config: GrappaConfig, strategy: FusionStrategy, names: list[str],
                      existing: Mapping[str, object] | None, backbone: Backbone) -> WarmStart | None:
    """The previous fused model to start from after an incremental update, or None.

    Only when ``[fuse] warm_start`` is on, the strategy trains attention fusion layers only
    (not adaptors), and the stored fused model fuses a strict subset of ``names`` (sets were
    added; the attention's Q, K and logit scale do not depend on the number of sets) with the
    same backbone and the same attention start. A retrain for any other reason starts cold,
    as a fresh run would.
    """
    from grappa_cli.model.checkpoint import load_fusion

    if not config.fuse.warm_start or existing is None or not existing.get("complete"):
        return None
    if getattr(strategy, "trains_adaptors", False):
        return None
    fused = record_fields(existing, "params").get("sets") or []
    previous = [str(name) for name in fused] if isinstance(fused, list) else []
    if not previous or not set(previous) < set(names):
        return None
    try:
        checkpoint = load_fusion(artifacts.checkpoint_path(project, f"fusion/{strategy.name}"), backbone)
    except (GrappaError, OSError):  # an unreadable or foreign file: start cold, as without one
        return None
    if checkpoint.kind != "attention" or str(checkpoint.metadata.get("attention_init") or "linear") != str(
            config.fuse.attention_init):
        return None
    return WarmStart(checkpoint.layers, previous, str(existing.get("fingerprint")))


def _plain(info: Mapping[str, object]) -> dict[str, object]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in info.items()}


def inspect_attention(project: Project, strategy_name: str, *, tasks: list[str] | None = None,
                      limit: int = 2048, batch_size: int = 64, device: str | None = None) -> dict[str, Any]:
    """Mean attention alpha per layer and set, over the training set and each task's test split.

    For a router (Grappa-R) the sets are followed by the backbone's share, and ``routing`` is
    what its criterion chose per training source (scores and weights, from its record).
    """
    import torch

    from grappa_cli.data.images import ImageDataset, decode_min_side, make_loader
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.pipeline.stages import models
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.runtime import resolve_device

    config = project.config()
    store = project.store(mode="r")
    backbone = build_backbone(backbone_spec(config))
    ref = models.parse(f"fused:{strategy_name}")
    model = models.load(project, ref, backbone)
    rec = models.record(project, ref) or {}
    set_names = record_fields(rec, "params").get("sets") or [f"set{i}" for i in range(model.num_sets)]
    assert isinstance(set_names, list)
    dev = resolve_device(device or config.runtime.device)
    model = model.to(dev).eval()
    transform = eval_transform(backbone.data_config)
    groups = {"training set": "features/train"}
    for task in tasks if tasks is not None else store.children("features/test"):
        groups[task] = f"features/test/{task}"
    rng = np.random.default_rng(0)
    routes_backbone = any(getattr(layer, "includes_backbone", False) for layer in model.fusion_layers())
    found: dict[str, dict[str, object]] = {}
    #: open JSON for ``grappa fuse --inspect`` and the routing report (which index into it)
    out: dict[str, Any] = {"strategy": strategy_name,
                           "sets": [*set_names, *(["backbone"] if routes_backbone else [])],
                           "groups": found, "training": rec.get("attention") or [],
                           "routing": record_fields(rec, "info").get("routing")}
    # Grappa-avg weighs every set 1/N on every image: no image needs to be decoded to know it
    uniform = all(getattr(layer, "kind", None) == "mean" for layer in model.fusion_layers())
    for label, key in groups.items():
        if not store.exists(f"{key}/paths"):
            continue
        paths = store.read(f"{key}/paths")
        rows = np.sort(rng.choice(len(paths), size=min(limit, len(paths)), replace=False))
        if uniform:
            readable = int(np.asarray(store.read(f"{key}/valid"))[rows].sum()) if store.exists(f"{key}/valid") \
                else len(rows)
            if readable:
                mean = np.full((len(model.fusion_layers()), model.num_sets), 1.0 / model.num_sets)
                found[label] = {"images": readable, "per_layer": mean.tolist(), "mean": mean.mean(0).tolist()}
            continue
        loader = make_loader(ImageDataset(list(paths[rows]), transform, min_side=decode_min_side(
            backbone.data_config)), batch_size=batch_size, num_workers=0, device=dev)
        total: np.ndarray | None = None
        count = 0
        with torch.inference_mode():
            for batch in loader:
                if not len(batch.indices):
                    continue
                _, alpha = model(batch.images.to(dev, non_blocking=True), return_attention=True)
                if routes_backbone:  # the rest of each layer's weight goes to the frozen backbone
                    alpha = torch.cat([alpha, (1 - alpha.sum(-1, keepdim=True)).clamp_min(0)], dim=-1)
                s = alpha.float().sum(0).cpu().numpy()
                total = s if total is None else total + s
                count += alpha.shape[0]
        if count:
            assert total is not None  # set with the first counted batch
            mean = total / count
            found[label] = {"images": count, "per_layer": mean.tolist(), "mean": mean.mean(0).tolist()}
    return out
