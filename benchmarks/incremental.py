"""Adding a domain: the incremental update against a from-scratch run on the union, on real images.

For each seed, on the quality harness's real-image tasks (:mod:`quality_data`):

1. *before*: a project trained on the ``--base`` tasks (features extracted once for all seeds);
2. *incremental*: a copy of it with the ``--add`` task added to ``data.train`` and the evaluated
   tasks, updated by ``grappa run`` (new images extracted, new sets trained on them alone, the
   old sets kept, the fusion retrained from the previous one: ``fuse.warm_start``);
3. *cold*: the same update with ``fuse.warm_start = false`` (the fusion starts from scratch);
4. *scratch*: a new project on all tasks, run from extraction on.

It prints the wall time of each (and the incremental/scratch ratio) and RP / MAP@R per task for
the backbone, Grappa-avg and Grappa-N of each project, mean ± std over seeds.

    PYTHONPATH=src python benchmarks/incremental.py --seeds 0,1,2 --md incremental.md
    PYTHONPATH=src python benchmarks/incremental.py --small --seeds 0     # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import quality  # noqa: E402
import quality_data  # noqa: E402

RUNS = ("before", "incremental", "cold", "scratch")
MODELS = (("backbone", "M (backbone)"), ("fused:avg", "Grappa-avg"), ("fused:neighbor", "Grappa-N"))
METRICS = (("r_precision", "RP"), ("map@r", "MAP@R"))


def settings_for(split: str, size: str, tasks: list[str], overrides: dict[str, Any]) -> quality.Settings:
    return quality.Settings(split, size, tasks, overrides, ["avg", "neighbor"])


STAGE_SECONDS: dict[str, dict[str, float]] = {}


def timed_run(project: Any, label: str = "", **kwargs: Any) -> float:
    """Wall time of ``grappa run`` through eval; the seconds of each stage go to ``STAGE_SECONDS[label]``."""
    from grappa_cli.console import NullReporter
    from grappa_cli.pipeline.run import run_pipeline

    stages: dict[str, float] = {}

    class StageClock(NullReporter):
        current: str | None = None
        since = 0.0

        def stage(self, text: str) -> None:
            self.current, self.since = text.split("] ", 1)[-1], time.perf_counter()

        def step_done(self) -> None:
            if self.current:
                stages[self.current] = round(time.perf_counter() - self.since, 1)

    start = time.perf_counter()
    run_pipeline(project, until="eval", reporter=StageClock(), **kwargs)
    STAGE_SECONDS[label] = stages
    return time.perf_counter() - start


def scores(project: Any) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {task: {metric: percent}}}`` of a project's stored results."""
    from grappa_cli.reporting.results import load_results

    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in load_results(project.results_dir):
        out.setdefault(r.model, {})[r.task] = {m: 100 * float(v) for m, v in r.metrics.items()}
    return out


def run_seed(work: Path, data_root: Path, base_extracted: Path, base: quality.Settings, union: quality.Settings,
             seed: int, runs: tuple[str, ...] = RUNS) -> dict[str, Any]:
    from grappa_cli.config import update_file
    from grappa_cli.project import Project
    from grappa_cli.setup.init import create_project

    out: dict[str, Any] = {"seconds": {}, "scores": {}}
    before_root = work / f"before-s{seed}"
    if before_root.exists():
        shutil.rmtree(before_root)
    shutil.copytree(base_extracted, before_root, ignore=shutil.ignore_patterns("extracted", "*.lock"))
    before = Project(before_root)
    quality.fresh_config(before)
    quality.configure(before, data_root, base, seed)
    out["seconds"]["before"] = timed_run(before, "before")
    out["scores"]["before"] = scores(before)

    for name, warm in (("incremental", True), ("cold", False)):
        if name not in runs:
            continue
        root = work / f"{name}-s{seed}"
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(before_root, root, ignore=shutil.ignore_patterns("*.lock"))
        project = Project(root)
        quality.configure(project, data_root, union, seed)  # data.train: the base tasks, then the added one
        update_file(project.config_path, lambda doc, w=warm: doc["fuse"].__setitem__("warm_start", w))
        out["seconds"][name] = timed_run(project, name)
        out["scores"][name] = scores(project)
        record = project.store(mode="r").provenance("features/train") or {}
        out.setdefault("increments", [inc["stop"] for inc in record.get("increments") or []])

    root = work / f"scratch-s{seed}"
    if root.exists():
        shutil.rmtree(root)
    project = create_project(root)
    quality.configure(project, data_root, union, seed)
    out["seconds"]["scratch"] = timed_run(project, "scratch")
    out["scores"]["scratch"] = scores(project)
    out["stage_seconds"] = dict(STAGE_SECONDS)
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def tables(per_seed: list[dict[str, Any]], tasks: list[str], added: list[str], runs: tuple[str, ...] = RUNS) -> str:
    lines = []
    for metric, label in METRICS:
        lines += [f"### {label} (percent), mean ± std over {len(per_seed)} seeds", "",
                  "| model | project | " + " | ".join(f"{t}{' (added)' if t in added else ''}" for t in tasks)
                  + " | mean |", "|---|---|" + "---|" * (len(tasks) + 1)]
        for model, name in MODELS:
            for run in runs:
                if model == "backbone" and run != "scratch":
                    continue
                cells, means = [], []
                for task in tasks:
                    values = [s["scores"][run].get(model, {}).get(task, {}).get(metric) for s in per_seed]
                    values = [v for v in values if v is not None]
                    cells.append(mean_std(values))
                per_seed_mean = []
                for s in per_seed:
                    got = [s["scores"][run].get(model, {}).get(t, {}).get(metric) for t in tasks]
                    if all(v is not None for v in got):
                        per_seed_mean.append(statistics.mean(got))
                means = per_seed_mean
                shown = "M" if model == "backbone" else run
                lines.append(f"| {name} | {shown} | " + " | ".join(cells) + f" | {mean_std(means)} |")
        lines.append("")
    secs = {run: [s["seconds"][run] for s in per_seed] for run in runs}
    ratio = [s["seconds"]["incremental"] / s["seconds"]["scratch"] for s in per_seed]
    lines += ["| run | wall time (s) |", "|---|---|"]
    lines += [f"| {run} | {mean_std(secs[run])} |" for run in runs]
    lines += ["", f"incremental / scratch: {mean_std(ratio)}"]
    if "cold" in runs:
        cold = [s["seconds"]["cold"] / s["seconds"]["scratch"] for s in per_seed]
        lines[-1] += f" (cold fusion: {mean_std(cold)})"
    return "\n".join(lines)


def verdict(per_seed: list[dict[str, Any]], old: list[str], added: list[str]) -> dict[str, Any]:
    """The issue's three checks, mean over seeds (RP)."""

    def mean(run: str, model: str, task: str) -> float:
        return statistics.mean(s["scores"][run][model][task]["r_precision"] for s in per_seed)

    out: dict[str, Any] = {
        "time_ratio": statistics.mean(s["seconds"]["incremental"] / s["seconds"]["scratch"] for s in per_seed)}
    for task in added:
        out[f"{task}: N(inc) - M"] = round(mean("incremental", "fused:neighbor", task)
                                           - mean("scratch", "backbone", task), 2)
        out[f"{task}: N(inc) - N(scratch)"] = round(mean("incremental", "fused:neighbor", task)
                                                    - mean("scratch", "fused:neighbor", task), 2)
    for task in old:
        out[f"{task}: N(inc) - N(before)"] = round(mean("incremental", "fused:neighbor", task)
                                                   - mean("before", "fused:neighbor", task), 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="stamps,clipart", help="tasks of the first training set")
    parser.add_argument("--add", default="digits", help="task(s) added by the incremental update")
    parser.add_argument("--small", action="store_true", help="the quality harness's small sizes (minutes)")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--work", default=os.environ.get("GRAPPA_INCREMENTAL_WORK", "/tmp/grappa-incremental"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-cold", action="store_true", help="leave out the update with a cold-started fusion")
    parser.add_argument("--md", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    size = "small" if args.small else "default"
    runs = tuple(r for r in RUNS if not (args.skip_cold and r == "cold"))
    old = [t for t in args.base.split(",") if t]
    added = [t for t in args.add.split(",") if t]
    tasks = old + added
    missing = [t for t in tasks if not quality_data.available(t)]
    if missing:
        packages = sorted({quality_data.PACKAGES.get(t, t) for t in missing})
        raise SystemExit(f"Error: the images of {', '.join(missing)} are not installed; "
                         f"apt-get install {' '.join(packages)} (or choose other --base/--add tasks)")
    overrides = {**(quality.SMALL_OVERRIDES if args.small else {}),
                 **dict(quality.parse_override(o) for o in args.overrides)}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRAPPA_PROGRESS", "0")
    for task in tasks:
        if task not in quality.SIZES[size]:
            quality.SIZES[size][task] = quality.SIZES["default"][task]
    union = settings_for(args.split, size, tasks, overrides)
    base = settings_for(args.split, size, old, overrides)
    data_root = quality.write_data(work, quality.Settings(args.split, size, tasks, {}, []))
    base_extracted = quality.base_project(work, data_root, base)
    per_seed = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        per_seed.append(run_seed(work, data_root, base_extracted, base, union, seed, runs))
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.0f} s" for k, v in per_seed[-1]["seconds"].items()),
              json.dumps(per_seed[-1]["stage_seconds"]), file=sys.stderr)
    text = tables(per_seed, tasks, added, runs)
    summary = verdict(per_seed, old, added)
    print(text)
    print(json.dumps(summary, indent=1))
    if args.md:
        Path(args.md).write_text(text + "\n\n" + json.dumps(summary, indent=1) + "\n")
    out = {"settings": vars(args), "per_seed": per_seed, "verdict": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
