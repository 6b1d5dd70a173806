"""Rates measured in the project, and how each stage's planned work is priced with them.

:func:`grappa_cli.pipeline.estimate.estimate` sums the prices (see its module for the rules); the
stage table (:mod:`grappa_cli.pipeline.stage_table`) names each stage's ``price_*`` function.
"""


from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grappa_cli.pipeline.stage import Stage

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.pipeline.graph import Node, Plan
    from grappa_cli.project import Project
    from grappa_cli.storage.store import Store

#: One adaptation pass (forward, activation gradients, augmentation) in embeddings, for a stage
#: that has not run yet. Measured as 1.65-2.12 (EfficientNet-Lite0 at 96 px on the CPU: the demo
#: quiet and loaded, two validation projects of the quality harness) and 2.2 for ViT-S/16 at
#: 224 px (``benchmarks/run_all.py``, training vs inference); the frozen backbone needs no weight
#: gradients, so backward costs about a forward, not two.
ADAPT_PER_EMBED = 2.0
#: The same under bf16 on the CPU (``[runtime] cpu_amp``): bf16 speeds inference up more than
#: training (2.28x against 1.61x at 224 px on an AVX512-BF16 CPU), so an adaptation pass costs
#: more embeddings. Measured 3.0 on the default project of the benchmarks page (2,383 images at
#: 224 px: 915 s of adaptation against 606 s priced at 2.0).
ADAPT_PER_EMBED_CPU_BF16 = 3.0
#: One fusion pass per candidate in adaptation passes, before a fusion has run: the backbone runs
#: once for all the candidates, so a pass over 1 + N candidates costs less than 1 + N adaptation
#: passes. Measured 0.58-0.70 on the same five projects.
FUSE_PER_ADAPT = 0.65


@dataclass
class Rates:
    embed: float | None = None  # seconds per image, frozen backbone forward
    adapt: float | None = None  # seconds per image pass, one adaptor set trained
    fuse: float | None = None  # seconds per image pass and candidate (1 + sets)
    rough: list[str] = field(default_factory=list)  # rates borrowed from another stage


@dataclass
class Estimate:
    seconds: dict[str, float]  # stage -> seconds of the announced work
    rough: list[str]  # stages whose rate was borrowed
    unknown: list[str]  # stages with work but no rate at all (nothing measured yet)
    #: stage -> seconds from the rates alone, before the project's runs calibrated them
    #: (:func:`grappa_cli.pipeline.estimate.calibration` compares runs with these)
    priced: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def line(self) -> str:
        """``about 6 min (adapt 3 min, fuse 2 min, eval 1 min)``, or why there is no estimate."""
        if self.unknown and not self.seconds:
            return "no estimate yet: nothing has been measured in this project (after `grappa extract` there is)"
        parts = [f"{stage} {_duration(s)}{' (rough)' if stage in self.rough else ''}"
                 for stage, s in self.seconds.items() if s >= 0.5]
        text = f"about {_duration(self.total)}" + (f" ({', '.join(parts)})" if parts else "")
        text += ", from rates measured in this project"
        if self.unknown:
            text += f"; not counted: {', '.join(self.unknown)} (no rate measured yet)"
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def measured(project: Project, store: Store | None) -> Rates:
    """The three rates from the project's records (None where nothing was measured)."""
    import json

    from grappa_cli.records import artifacts

    embed_s = embed_n = 0.0
    cpu_bf16 = False  # the embeddings ran under bf16 on the CPU: their rate says less about training's
    if store is not None:
        keys = ["features/train", *(f"features/test/{t}" for t in store.children("features/test"))]
        for key in keys:
            rec = store.provenance(key) or {}
            if rec.get("seconds") and rec.get("embedded"):
                embed_s, embed_n = embed_s + float(rec["seconds"]), embed_n + float(rec["embedded"])
                cpu_bf16 = cpu_bf16 or bool((rec.get("params") or {}).get("cpu_amp"))
    for path in project.results_dir.glob("*/*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("embedded") and doc.get("seconds") and doc.get("images"):
            embed_s, embed_n = embed_s + float(doc["seconds"]), embed_n + float(doc["images"])
    rates = Rates(embed=embed_s / embed_n if embed_n else None)

    adapt = []
    for path in project.adaptors_dir.glob("*.safetensors"):
        rec = artifacts.read_checkpoint_record(path) or {}
        if rec.get("seconds") and rec.get("images") and rec.get("epochs"):
            adapt.append(float(rec["seconds"]) / (float(rec["epochs"]) * float(rec["images"])))
    rates.adapt = statistics.median(adapt) if adapt else None
    fuse = []
    for path in project.fusion_dir.glob("*.safetensors"):
        rec = artifacts.read_checkpoint_record(path) or {}
        images = (rec.get("trained_on") or {}).get("images")
        epochs = len(rec.get("loss_curve") or [])
        sets = len((rec.get("params") or {}).get("sets") or [])
        if rec.get("seconds") and images and epochs and sets:
            fuse.append(float(rec["seconds"]) / (epochs * float(images) * (1 + sets)))
    rates.fuse = statistics.median(fuse) if fuse else None

    if rates.adapt is None and rates.embed is not None:
        per_embed = ADAPT_PER_EMBED_CPU_BF16 if cpu_bf16 else ADAPT_PER_EMBED
        rates.adapt, rates.rough = per_embed * rates.embed, [*rates.rough, Stage.adapt]
    if rates.fuse is None and rates.adapt is not None:
        rates.fuse, rates.rough = FUSE_PER_ADAPT * rates.adapt, [*rates.rough, Stage.fuse]
    return rates


@dataclass
class Pricing:
    """What pricing the planned nodes needs: the configuration, the plan, the rates and the sums so far.

    Each stage's :attr:`~grappa_cli.pipeline.stage_table.StageSpec.price` adds the seconds of one node.
    """

    config: GrappaConfig
    plan: Plan
    rates: Rates
    seconds: dict[str, float] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    _test_images: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def add(self, stage: str, rate: float | None, work: float) -> None:
        if work <= 0:
            return
        if rate is None:
            if stage not in self.unknown:
                self.unknown.append(stage)
            return
        self.seconds[stage] = self.seconds.get(stage, 0.0) + rate * work

    def test_images(self, task: str) -> int:
        """Images of a task's test split (read once: every model's result of it embeds the same)."""
        from grappa_cli.data import sources
        from grappa_cli.errors import GrappaError

        if task not in self._test_images:
            try:
                self._test_images[task] = len(sources.test_set(self.config, task))
            except GrappaError:
                self._test_images[task] = 0
        return self._test_images[task]

    @property
    def sets(self) -> dict[str, int]:
        """Training images of each adaptor set."""
        return {name: entry.images for entry in self.plan.increments for name in entry.names}

    @property
    def union(self) -> int:
        """Training images of all increments (what the fusion trains on)."""
        return sum(entry.images for entry in self.plan.increments)


def price_extract(p: Pricing, node: Node) -> None:
    if node.id == "features/train":
        grown = [e.images for e in p.plan.increments if e.features is None]
        p.add(Stage.extract, p.rates.embed, sum(grown) if grown else p.union)
    else:
        p.add(Stage.extract, p.rates.embed, p.test_images(node.id.rsplit("/", 1)[1]))


def price_adapt(p: Pricing, node: Node) -> None:
    from grappa_cli.pipeline.stages import replay
    from grappa_cli.train.optim.schedule import fit_to_size

    name = node.id.split("/", 1)[1]
    sets = p.sets
    if name not in sets:
        return
    n = sets[name]
    a = p.config.adapt
    if replay.plan(p.config, p.plan.increments, name)[1]:  # replayed images too
        n += round(a.replay * n)
    batch, epochs = fit_to_size(max(n, 1), a.batch_size, a.epochs, a.min_steps)
    p.add(Stage.adapt, p.rates.adapt, epochs * (n // batch) * batch)


def price_fuse(p: Pricing, node: Node) -> None:
    from grappa_cli import plugins
    from grappa_cli.errors import GrappaError
    from grappa_cli.fusion.base import FusionOptions
    from grappa_cli.train.optim.schedule import fit_to_size

    config, union, sets = p.config, p.union, p.sets
    try:
        params = plugins.get("fusion_strategies", node.id.split("/", 1)[1]).params(config, FusionOptions())
    except GrappaError:
        return
    if params.get("fusion") == "router":  # Grappa-R: forward passes only, no training epochs
        from grappa_cli.fusion.routing import LABEL_CRITERIA

        images = min(union, int(params["images_per_source"]) * max(1, len(config.data.train)))
        passes = 2 + (0 if params["criterion"] in LABEL_CRITERIA else 2 * (1 + len(sets)))
        p.add(Stage.fuse, p.rates.embed, passes * images)
        return
    if "epochs" not in params:  # nothing to train (Grappa-avg)
        return
    f = config.fuse
    warm = config.fuse.warm_start and node.record is not None and any(
        e.increment.index > 0 and e.features is None for e in p.plan.increments)
    fraction = float(f.warm_steps) if warm else 1.0
    epochs, min_steps = max(1, round(f.epochs * fraction)), round(f.min_steps * fraction)
    batch, epochs = fit_to_size(max(union, 1), f.batch_size, epochs, min_steps)
    p.add(Stage.fuse, p.rates.fuse, epochs * (union // batch) * batch * (1 + len(sets)))


def price_eval(p: Pricing, node: Node) -> None:
    model, task = node.id.split("/")[1:3]
    if model != "backbone":  # the backbone's results reuse the extracted features
        p.add(Stage.eval, p.rates.embed, p.test_images(task))
