"""Quality harness: does adaptation help on real images? Table 2 rows, mean ± std over seeds.

Runs the whole pipeline (extract -> cluster -> adapt -> fuse -> eval) through the public stage
API on real-image retrieval tasks (:mod:`quality_data`: scikit-learn's digits and sample
photographs, Tux Paint's stamps at a fine and a coarse granularity, Open Clip Art drawings),
with the pretrained EfficientNet-Lite0 that ships with the ``offline`` extra, over several
seeds, and prints the paper's Table 2 rows per task: M, M + P_i, the oracle O, Grappa-avg,
Grappa-T, Grappa-N, M + A1, M*(random) and the supervised reference, as mean ± std.

Settings are chosen on ``--split val`` (validation classes carved from the training classes:
the test classes are never written) and then reported once on ``--split test``.

    PYTHONPATH=src python benchmarks/quality.py --split val --seeds 0,1,2
    PYTHONPATH=src python benchmarks/quality.py --split test --seeds 0,1,2 --md quality.md
    PYTHONPATH=src python benchmarks/quality.py --small          # a few minutes, run by the tests
    PYTHONPATH=src python benchmarks/quality.py --set adapt.prototypes=random --set fuse.attention_init=linear

Seeds run side by side, one process and one torch thread each, as many at once as there are usable
cores (``--jobs``): on a 2-core machine one run uses one core, and the other would sit idle.

Each ``--set SECTION.KEY=VALUE`` overrides one ``grappa.toml`` key (values parsed as TOML), so
every ablation of the defaults is one switch, e.g. ``adapt.prototypes=random`` (random instead of
centroid prototypes), ``fuse.attention_init=linear`` (Q/K with ``nn.Linear``'s initialisation
instead of a start at Grappa-avg), ``fuse.pair_augment=true`` (augment k-NN pairs),
``cluster.k=[8,32,128]``.
Projects live under ``--work`` and are reused: features are extracted once per split and size,
and a rerun with the same settings resumes or only re-reads the results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import quality_data  # noqa: E402

#: Tasks of the default and the small harness, and images per class.
SIZES: dict[str, dict[str, int]] = {
    "default": {"digits": 40, "photos": 12, "stamps": 16, "stamps-coarse": 16, "clipart": 24},
    "small": {"digits": 24, "photos": 6, "stamps": 10, "stamps-coarse": 10},
    # every class as full as the sources allow: validation tasks of hundreds of images, so that one
    # task's RP moves by about 0.15 from the queries' sampling instead of 0.4 (the default's)
    "large": {"digits": 170, "photos": 48, "stamps": 64, "stamps-coarse": 64, "clipart": 200},
}
#: Settings of ``--small`` (a smoke run of minutes, used by the test suite): two sets, short training.
SMALL_OVERRIDES = {"cluster.auto_count": 2, "adapt.min_steps": 30, "fuse.min_steps": 30}
#: Fusion strategies trained per seed (``--strategies``); the baselines are optional.
DEFAULT_STRATEGIES = ("avg", "transform", "neighbor", "route")
ALL_STRATEGIES = ("avg", "transform", "neighbor", "route", "single-random", "random", "supervised")
METRICS = (("r_precision", "RP"), ("map@r", "MAP@R"))
ROW_NAMES = {
    "backbone": "M (backbone)", "fused:single-random": "M + A1", "fused:random": "M* (random)",
    "oracle": "Oracle O", "fused:avg": "Grappa-avg (default)", "fused:transform": "Grappa-T",
    "fused:neighbor": "Grappa-N", "fused:route": "Grappa-R", "fused:supervised": "supervised (labels)",
}


@dataclass
class Settings:
    split: str
    size: str
    tasks: list[str]
    overrides: dict[str, Any]
    strategies: list[str]

    def tag(self) -> str:
        """The run directory's name: the overrides only, so that training another fusion strategy
        on the same settings reuses the adaptor sets (the pipeline only adds the missing fusions)."""
        text = json.dumps({"overrides": self.overrides}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def parse_override(text: str) -> tuple[str, Any]:
    import tomlkit

    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise SystemExit(f"Error: --set takes SECTION.KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomlkit.parse(f"v = {raw}")["v"]
        value = value.unwrap() if hasattr(value, "unwrap") else value
    except Exception:
        value = raw
    return key.strip(), value


def write_data(work: Path, settings: Settings) -> Path:
    root = work / f"data-{settings.split}-{settings.size}"
    marker = root / "done.json"
    if marker.is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    counts = {}
    for name in settings.tasks:
        counts[name] = quality_data.write_task(root, name, SIZES[settings.size][name], split=settings.split)
    marker.write_text(json.dumps(counts))
    return root


def configure(project: Any, data_root: Path, settings: Settings, seed: int) -> None:
    import tomlkit

    from grappa_cli.config import update_file

    def change(doc: Any) -> None:
        backbone = {"name": "efficientnet_lite0", "pretrained": True, "input_size": 96}
        for key, value in backbone.items():
            doc["backbone"][key] = value
        doc["data"]["train"] = [t for t in settings.tasks if t not in quality_data.ALL_TEST]
        doc["data"]["num_workers"] = 0
        doc["data"]["batch_size"] = 64
        doc["data"]["feature_dtype"] = "float32"
        doc["eval"]["tasks"] = list(settings.tasks)
        doc["eval"]["batch_size"] = 64
        doc["runtime"]["seed"] = seed
        doc["cluster"]["seed"] = seed
        doc["fuse"]["strategies"] = list(settings.strategies)
        for key, value in settings.overrides.items():
            section, name = key.split(".", 1)
            doc[section][name] = value
        tasks = tomlkit.table(is_super_table=True)
        for name in settings.tasks:
            entry = tomlkit.table()
            entry["type"] = "imagefolder"
            entry["root"] = str(data_root / name)
            if name in quality_data.ALL_TEST:
                entry["split"] = "all-test"
            tasks[name] = entry
        doc["tasks"] = tasks

    update_file(project.config_path, change)


def base_project(work: Path, data_root: Path, settings: Settings) -> Path:
    """A project with the training features extracted (shared by every seed and setting)."""
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.project import Project
    from grappa_cli.setup.init import create_project

    root = work / f"base-{settings.split}-{settings.size}"
    if not (root / "extracted").is_file():
        if root.exists():
            shutil.rmtree(root)
        project = create_project(root)
        configure(project, data_root, Settings(settings.split, settings.size, settings.tasks, {}, []), 0)
        run_pipeline(Project(root), until="extract")
        (root / "extracted").write_text("ok")
    return root


def fresh_config(project: Any) -> None:
    """Rewrite ``project``'s ``grappa.toml`` with the current defaults (before :func:`configure`).

    A base project copied from an earlier run keeps the defaults of the code that wrote its
    file (``grappa init`` writes every key), so without this a changed default would not reach
    a run that reuses the base.
    """
    from grappa_cli.config import render

    project.config_path.write_text(render())


def run_seed(work: Path, base: Path, data_root: Path, settings: Settings, seed: int) -> tuple[list[Any], float]:
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.project import Project
    from grappa_cli.reporting.results import load_results

    root = work / f"run-{settings.split}-{settings.size}-{settings.tag()}-s{seed}"
    if not root.exists():
        shutil.copytree(base, root, ignore=shutil.ignore_patterns("extracted", "*.lock"))
    project = Project(root)
    fresh_config(project)
    configure(project, data_root, settings, seed)
    start = time.perf_counter()
    run_pipeline(project, until="eval")
    return load_results(project.results_dir), time.perf_counter() - start


def _seed_job(work: Path, base: Path, data_root: Path, settings: Settings, seed: int,
              threads: int) -> tuple[dict[str, dict[str, dict[str, float]]], float]:
    """One seed in a process of its own (spawned: zarr's event loop must not be forked)."""
    from grappa_cli.runtime import reuse_freed_memory

    reuse_freed_memory()  # as a `grappa` process does: the same numbers, fewer page faults
    if threads:
        import torch

        torch.set_num_threads(threads)
    results, took = run_seed(work, base, data_root, settings, seed)
    return table_rows(results), took


def job_count(requested: int, seeds: int, cores: int) -> int:
    """Seeds to run at once: ``requested`` (0 = one per usable core), never more than there are seeds."""
    return max(1, min(requested or cores, seeds))


def run_seeds(work: Path, base: Path, data_root: Path, settings: Settings, seeds: list[int], *,
              jobs: int, threads: int) -> list[tuple[dict[str, dict[str, dict[str, float]]], float]]:
    """``(table rows, seconds)`` per seed, in the order of ``seeds``; ``jobs`` processes at once.

    Every seed has its own project directory (copied from the shared ``base``), so the
    processes share nothing they write.
    """
    if jobs <= 1:
        return [_seed_job(work, base, data_root, settings, seed, 0) for seed in seeds]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_seed_job, work, base, data_root, settings, seed, threads) for seed in seeds]
        return [future.result() for future in futures]


def table_rows(results: list[Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{row: {task: {metric: value}}}`` for one seed, the oracle included."""
    from grappa_cli.reporting.results import adaptor_k, oracle

    rows: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        name = r.model
        if adaptor_k(name) is not None:
            name = f"M + P (k{adaptor_k(name)})"
        rows.setdefault(name, {})[r.task] = dict(r.metrics)
    for task, choice in oracle(results).items():
        rows.setdefault("oracle", {})[task] = dict(choice.metrics)
    return rows


def aggregate(per_seed: list[dict[str, dict[str, dict[str, float]]]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for rows in per_seed:
        for row, tasks in rows.items():
            for task, metrics in tasks.items():
                for metric, value in metrics.items():
                    out.setdefault(row, {}).setdefault(task, {}).setdefault(metric, []).append(100 * value)
    return out


def _order(rows: list[str]) -> list[str]:
    singles = sorted((r for r in rows if r.startswith("M + P")), key=lambda r: int(r.split("k")[-1].rstrip(")")))
    fixed = ["backbone", "fused:single-random", "fused:random", *singles, "oracle", "fused:avg",
             "fused:transform", "fused:neighbor", "fused:route", "fused:supervised"]
    return [r for r in fixed if r in rows] + sorted(set(rows) - set(fixed))


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def markdown(agg: dict[str, Any], tasks: list[str], metric: str, title: str) -> str:
    header = "| model | " + " | ".join(tasks) + " | mean |"
    lines = [f"**{title}**", "", header, "|---" * (len(tasks) + 2) + "|"]
    for row in _order(list(agg)):
        cells, means = [], []
        for task in tasks:
            values = agg[row].get(task, {}).get(metric, [])
            cells.append(mean_std(values))
            if values:
                means.append(values)
        per_seed_mean = [statistics.fmean(v) for v in zip(*means, strict=False)] if len(means) == len(tasks) else []
        lines.append(f"| {ROW_NAMES.get(row, row)} | " + " | ".join(cells) + f" | {mean_std(per_seed_mean)} |")
    return "\n".join(lines)


def verdict(agg: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """The targets: the default Grappa-avg, Grappa-N and Grappa-R vs M, Grappa-avg and the oracle (means over
    seeds, percent).

    Grappa-avg's keys start with ``A_``, Grappa-N's with ``N_``, Grappa-R's with ``R_``.
    """
    def mean(row: str, task: str, metric: str) -> float | None:
        values = agg.get(row, {}).get(task, {}).get(metric)
        return statistics.fmean(values) if values else None

    out: dict[str, Any] = {}
    if "backbone" not in agg:
        return out
    for prefix, row in (("A", "fused:avg"), ("N", "fused:neighbor"), ("R", "fused:route")):
        if row not in agg:
            continue
        deltas = {m: {t: (mean(row, t, m) or 0) - (mean("backbone", t, m) or 0) for t in tasks}
                  for m, _ in METRICS}
        out[f"{prefix}_minus_M"] = deltas
        out[f"{prefix}_ge_M_every_task"] = all(d >= 0 for m in deltas.values() for d in m.values())
        out[f"{prefix}_minus_M_mean_RP"] = statistics.fmean(deltas["r_precision"].values())
        for other, name in (("fused:avg", "avg"), ("oracle", "oracle")):
            if other in agg:
                out[f"{prefix}_minus_{name}_mean_RP"] = statistics.fmean(
                    (mean(row, t, "r_precision") or 0) - (mean(other, t, "r_precision") or 0) for t in tasks)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="few images, digits/photos/stamps only (minutes)")
    parser.add_argument("--size", choices=tuple(SIZES), default="",
                        help="images per class: default, small (as --small, without its shorter training) "
                             "or large (each class as full as its source allows)")
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="val: validation classes carved from the training classes; test: the test classes")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--tasks", default="", help="comma-separated subset of the tasks")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help=f"fusion strategies to train ({', '.join(ALL_STRATEGIES)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--work", default=os.environ.get("GRAPPA_QUALITY_WORK", "/tmp/grappa-quality"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 by default: on a shared 2-core machine more threads wait "
                             "on each other; 0 leaves torch's default)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="seeds run at once, one process each (0 = one per usable core)")
    parser.add_argument("--md", default="", help="also write the tables to this Markdown file")
    parser.add_argument("--json", default="", help="write every number to this JSON file")
    args = parser.parse_args(argv)

    from grappa_cli.runtime import reuse_freed_memory

    reuse_freed_memory()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    size = args.size or ("small" if args.small else "default")
    tasks = [t for t in (args.tasks.split(",") if args.tasks else SIZES[size]) if t]
    missing = [t for t in tasks if not quality_data.available(t)]
    if missing:
        packages = sorted({quality_data.PACKAGES.get(t, t) for t in missing})
        raise SystemExit(f"Error: the images of {', '.join(missing)} are not installed; "
                         f"apt-get install {' '.join(packages)} (or pass --tasks without them)")
    overrides = {**(SMALL_OVERRIDES if args.small else {}), **dict(parse_override(o) for o in args.overrides)}
    settings = Settings(args.split, size, tasks, overrides, [s for s in args.strategies.split(",") if s])
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRAPPA_PROGRESS", "0")

    start = time.perf_counter()
    data_root = write_data(work, settings)
    base = base_project(work, data_root, settings)
    from grappa_cli.runtime import usable_cpus

    seeds = [int(s) for s in args.seeds.split(",") if s]
    jobs = job_count(args.jobs, len(seeds), usable_cpus())
    print(f"{len(seeds)} seed(s), {jobs} at once", file=sys.stderr)
    per_seed, seconds = [], []
    for seed, (rows, took) in zip(seeds, run_seeds(work, base, data_root, settings, seeds,
                                                   jobs=jobs, threads=args.threads), strict=True):
        per_seed.append(rows)
        seconds.append(took)
        print(f"seed {seed}: {took:.0f} s", file=sys.stderr)
    agg = aggregate(per_seed)
    title = f"split={args.split} size={size} seeds={args.seeds} overrides={overrides or 'defaults'}"
    text = "\n\n".join(markdown(agg, tasks, m, f"{label} (percent), {title}") for m, label in METRICS)
    summary = verdict(agg, tasks)
    print(text)
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_minus_M")}, indent=1))
    total = time.perf_counter() - start
    print(f"total {total:.0f} s", file=sys.stderr)
    if args.md:
        Path(args.md).write_text(text + "\n")
    out = {"settings": vars(args), "jobs": jobs, "tasks": tasks, "aggregate": agg, "verdict": summary,
           "seconds_per_seed": seconds, "total_seconds": total}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
