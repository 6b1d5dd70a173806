"""How long the work a plan announces will take, from rates measured in this very project.

Every stage records its seconds next to its work: embedding groups (``seconds``, ``embedded``),
adaptor sets (``seconds``, ``images``, ``epochs``), fused models (``seconds``, epochs as the loss
curve, ``trained_on.images``, the sets) and results (``seconds``, ``images``). From them come
three rates on this machine and device:

* embedding: seconds per image through the frozen backbone (extraction, evaluation);
* adaptation: seconds per training image pass of one set (forward, backward, augmentation);
* fusion: seconds per image pass per candidate (the backbone plus each fused set).

A stage that has not run yet borrows from the others (adaptation about 3x an embedding:
backward costs about twice the forward; fusion about an adaptation pass per candidate) and is
marked *rough*. The work itself comes from the plan: how many images each set trains on
(:func:`~grappa_cli.train.optim.schedule.fit_to_size` gives the passes), the union the fusion
trains on, the test images each result embeds. Nothing is loaded or run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

#: A backward pass and augmentation cost about twice a forward: one adaptation pass ~ 3 embeddings.
ADAPT_PER_EMBED = 3.0


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


def measured(project: Any, store: Any) -> Rates:
    """The three rates from the project's records (None where nothing was measured)."""
    import json

    from grappa_cli.records import artifacts

    embed_s = embed_n = 0.0
    if store is not None:
        keys = ["features/train", *(f"features/test/{t}" for t in store.children("features/test"))]
        for key in keys:
            rec = store.provenance(key) or {}
            if rec.get("seconds") and rec.get("embedded"):
                embed_s, embed_n = embed_s + float(rec["seconds"]), embed_n + float(rec["embedded"])
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
        rates.adapt, rates.rough = ADAPT_PER_EMBED * rates.embed, [*rates.rough, "adapt"]
    if rates.fuse is None and rates.adapt is not None:
        rates.fuse, rates.rough = rates.adapt, [*rates.rough, "fuse"]
    return rates


def estimate(project: Any, config: Any, plan: Any) -> Estimate:
    """Seconds of the work ``plan`` announces (:func:`grappa_cli.pipeline.planner.build`), stage by stage."""
    from grappa_cli import plugins
    from grappa_cli.data import sources
    from grappa_cli.errors import GrappaError
    from grappa_cli.fusion.base import FusionOptions
    from grappa_cli.pipeline.stages import replay
    from grappa_cli.train.optim.schedule import fit_to_size

    store = project.store(mode="r") if project.store_path.exists() else None
    rates = measured(project, store)
    todo = plan.todo()
    seconds: dict[str, float] = {}
    unknown: list[str] = []

    def add(stage: str, rate: float | None, work: float) -> None:
        if work <= 0:
            return
        if rate is None:
            if stage not in unknown:
                unknown.append(stage)
            return
        seconds[stage] = seconds.get(stage, 0.0) + rate * work

    counts: dict[str, int] = {}

    def test_images(task: str) -> int:
        """Images of a task's test split (read once: every model's result of it embeds the same)."""
        if task not in counts:
            try:
                counts[task] = len(sources.test_set(config, task))
            except GrappaError:
                counts[task] = 0
        return counts[task]

    sets = {name: entry.images for entry in plan.increments for name in entry.names}
    union = sum(entry.images for entry in plan.increments)
    for node in todo:
        if node.stage == "extract":
            if node.id == "features/train":
                grown = [e.images for e in plan.increments if e.features is None]
                add("extract", rates.embed, sum(grown) if grown else union)
            else:
                add("extract", rates.embed, test_images(node.id.rsplit("/", 1)[1]))
        elif node.stage == "adapt" and node.id.split("/", 1)[1] in sets:
            n = sets[node.id.split("/", 1)[1]]
            a = config.adapt
            if replay.plan(config, plan.increments, node.id.split("/", 1)[1])[1]:  # replayed images too
                n += round(a.replay * n)
            batch, epochs = fit_to_size(max(n, 1), a.batch_size, a.epochs, a.min_steps)
            add("adapt", rates.adapt, epochs * (n // batch) * batch)
        elif node.stage == "fuse":
            try:
                params = plugins.get("fusion_strategies", node.id.split("/", 1)[1]).params(config, FusionOptions())
            except GrappaError:
                continue
            if params.get("fusion") == "router":  # Grappa-R: forward passes only, no training epochs
                from grappa_cli.fusion.routing import LABEL_CRITERIA

                images = min(union, int(params["images_per_source"]) * max(1, len(config.data.train)))
                passes = 2 + (0 if params["criterion"] in LABEL_CRITERIA else 2 * (1 + len(sets)))
                add("fuse", rates.embed, passes * images)
                continue
            if "epochs" not in params:  # nothing to train (Grappa-avg)
                continue
            f = config.fuse
            warm = config.fuse.warm_start and node.record is not None and any(
                e.increment.index > 0 and e.features is None for e in plan.increments)
            fraction = float(f.warm_steps) if warm else 1.0
            epochs, min_steps = max(1, round(f.epochs * fraction)), round(f.min_steps * fraction)
            batch, epochs = fit_to_size(max(union, 1), f.batch_size, epochs, min_steps)
            add("fuse", rates.fuse, epochs * (union // batch) * batch * (1 + len(sets)))
        elif node.stage == "eval":
            model, task = node.id.split("/")[1:3]
            if model != "backbone":  # the backbone's results reuse the extracted features
                add("eval", rates.embed, test_images(task))
    return Estimate(seconds, [s for s in rates.rough if s in seconds], unknown)
