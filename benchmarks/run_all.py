"""Every benchmark of the project in one run, at one size, as one Markdown table of ratios.

Runs, one after the other on the same machine, the measurements of ``bench_input.py``,
``bench_inference.py``, ``bench_model.py``, ``bench_kmeans.py``, ``bench_metrics.py``, ``bench_eval.py``
and ``bench_demo.py --rows`` (their functions, imported), and prints each comparison as a ratio of two
numbers measured side by side, with what bounds it; the raw numbers go to ``--json``.

    PYTHONPATH=src python benchmarks/run_all.py --small --out bench.md    # a 2-core CPU in a few minutes
    PYTHONPATH=src python benchmarks/run_all.py --out bench.md            # bigger CPU sizes (tens of minutes)
    PYTHONPATH=src python benchmarks/run_all.py --size small,kmeans_n=20000 --only kmeans,model

``--size`` takes a preset (``small`` or ``default``) and/or ``field=value`` overrides of the
fields of :class:`Size`. A part that fails is reported as failed; the others still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Intra-op threads of every part (``--threads``; set before torch, faiss or scikit-learn start).
THREADS = 1
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


@dataclass
class Size:
    """What each part measures on (the ``default`` preset; ``small`` overrides some fields)."""

    model: str = "vit_small_patch16_224"
    input_images: int = 400
    input_epochs: int = 3
    input_workers: int = 2
    input_batch: int = 64
    compile_img: int = 224
    compile_depth: int = 12
    compile_batch: int = 8
    model_batch: int = 8
    model_img: int = 224
    model_repeats: int = 7
    kmeans_n: int = 50_000
    kmeans_dim: int = 384
    kmeans_k: int = 1024
    kmeans_niter: int = 20
    metrics_n: int = 50_000
    metrics_classes: int = 50
    train_img: int = 224
    train_batch: int = 16
    train_classes: int = 16384
    extract_images: int = 256
    extract_img: int = 224
    extract_batch: int = 16
    extract_workers: int = 2
    eval_model: str = "vit_tiny_patch16_224"
    eval_img: int = 112
    eval_images: int = 96
    eval_models: int = 6
    #: the demo's scale for the ``demo`` part (``grappa demo --size``)
    demo_scale: str = "default"
    #: the ``project`` part's tasks and their size (``default_project.py``; validation classes)
    project_tasks: str = "digits,stamps,clipart"
    project_size: str = "large"


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": {"input_images": 120, "input_epochs": 2, "compile_img": 64, "compile_depth": 4, "compile_batch": 8,
              "model_batch": 2, "model_img": 112, "model_repeats": 3, "kmeans_n": 8000, "kmeans_dim": 128,
              "kmeans_k": 256, "kmeans_niter": 10, "metrics_n": 10_000, "metrics_classes": 10, "train_img": 112,
              "train_batch": 8, "extract_images": 64, "extract_img": 112, "extract_batch": 8,
              "eval_images": 32, "eval_models": 3, "demo_scale": "tiny", "project_tasks": "digits,photos,stamps",
              "project_size": "small"},
}


def parse_size(spec: str) -> Size:
    """``"small"``, ``"default"``, ``"small,kmeans_n=20000"`` or ``"kmeans_k=512,metrics_n=5000"``."""
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(Size)}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            if part not in PRESETS:
                raise SystemExit(f"unknown size preset {part!r}; presets: {', '.join(PRESETS)}")
            values.update(PRESETS[part])
            continue
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in fields:
            raise SystemExit(f"unknown size field {key!r}; fields: {', '.join(fields)}")
        values[key] = value if fields[key].type == "str" else int(value)
    return Size(**values)


# -- parts: each returns its numbers and the table rows they give --------------------------------
Row = tuple[str, str, str, str, str]  # comparison, baseline, candidate, ratio, note


def part_input(size: Size) -> tuple[dict, list[Row]]:
    import bench_input

    args = bench_input.build_parser().parse_args([
        f"--images={size.input_images}", f"--epochs={size.input_epochs}", f"--workers={size.input_workers}",
        f"--batch-size={size.input_batch}"])
    r = bench_input.measure(args)
    return r, [(
        f"training input, {r['images']} JPEGs 500x375, {r['workers']} workers",
        f"JPEG + PIL/timm transform: {r['jpeg_timm_img_s']:.0f} img/s",
        f"cache + TensorAugment (CPU): {r['cache_gpu_augment_cpu_img_s']:.0f} img/s",
        f"**{r['ratio_cache_over_jpeg']:.2f}x**",
        f"cache read alone {r['cache_read_only_img_s']:.0f} img/s; augmentation alone "
        f"{r['augment_only_standard_img_s']:.0f} img/s on 1 thread (runs on the GPU there)",
    )]


def part_compile(size: Size) -> tuple[dict, list[Row]]:
    import bench_inference

    r = bench_inference.compiled_vs_eager(size.model, size.compile_img, size.compile_batch,
                                          depth=size.compile_depth)
    return r, [(
        f"torch.compile vs eager, ViT-S depth {r['depth']}, {r['img_size']} px, batch {r['batch']}",
        f"eager: {r['eager_s'] * 1e3:.0f} ms/batch",
        f"compiled: {r['compiled_s'] * 1e3:.0f} ms/batch (compiling took {r['compile_s']:.0f} s)",
        f"**{r['speedup']:.2f}x**",
        f"max |difference| {r['max_abs_diff']:.1e}; off by default (GRAPPA_COMPILE=1 turns it on)",
    )]


def part_model(size: Size) -> tuple[dict, list[Row]]:
    import bench_model

    r = bench_model.measure(size.model, size.model_batch, size.model_img, 8, 64, size.model_repeats)
    return r, [
        (f"M* (N = 8, D' = 64, attention) vs M, batch {r['batch']}, {r['img_size']} px",
         f"M: {r['latency_M_s'] * 1e3:.0f} ms", f"M*: {r['latency_Mstar_s'] * 1e3:.0f} ms",
         f"**{r['latency_Mstar_s'] / r['latency_M_s']:.2f}x**",
         f"analytic MACs {r['macs_Mstar'] / r['macs_M']:.2f}x, counted FLOPs {r['flops_Mstar'] / r['flops_M']:.2f}x"),
        ("adaptor bank vs loop of 8 adaptors, forward", f"loop: {r['loop_fwd_s'] * 1e3:.2f} ms",
         f"bank: {r['bank_fwd_s'] * 1e3:.2f} ms", f"**{r['loop_fwd_s'] / r['bank_fwd_s']:.2f}x**", "one layer"),
        ("adaptor bank vs loop, forward + backward", f"loop: {r['loop_train_s'] * 1e3:.2f} ms",
         f"bank: {r['bank_train_s'] * 1e3:.2f} ms", f"**{r['loop_train_s'] / r['bank_train_s']:.2f}x**",
         "one layer"),
    ]


def part_kmeans(size: Size) -> tuple[dict, list[Row]]:
    import bench_kmeans

    rows = bench_kmeans.compare_backends(size.kmeans_n, size.kmeans_dim, size.kmeans_k, size.kmeans_niter)
    (_, t_faiss, it_faiss, i_faiss, _), (_, t_sk, it_sk, i_sk, _) = rows
    r = {"n": size.kmeans_n, "dim": size.kmeans_dim, "k": size.kmeans_k, "niter": size.kmeans_niter,
         "faiss_s": t_faiss, "sklearn_s": t_sk, "faiss_inertia": i_faiss, "sklearn_inertia": i_sk,
         "faiss_iterations": it_faiss, "sklearn_iterations": it_sk}
    return r, [(
        f"k-means faiss vs scikit-learn, n = {r['n']:,}, D = {r['dim']}, k = {r['k']}",
        f"sklearn: {t_sk:.1f} s", f"faiss: {t_faiss:.1f} s", f"**{t_sk / t_faiss:.1f}x**",
        f"inertia faiss / sklearn = {i_faiss / i_sk:.4f} (target within 2%)",
    )]


def part_metrics(size: Size) -> tuple[dict, list[Row]]:
    import bench_metrics

    args = bench_metrics.build_parser().parse_args([f"--n={size.metrics_n}", f"--classes={size.metrics_classes}",
                                                    f"--threads={THREADS}"])
    runs = bench_metrics.compare(args)
    grappa, pml = runs
    r = {"runs": runs, "max_abs_diff": bench_metrics.max_difference(runs)}
    return r, [(
        f"retrieval metrics, {size.metrics_n:,} x 384, {size.metrics_classes:,} classes, leave-one-out",
        f"pytorch-metric-learning: {pml['cpu_seconds']:.1f} s CPU ({pml['seconds']:.1f} s wall), "
        f"{pml['rss_above_baseline_mib']:.0f} MiB",
        f"grappa: {grappa['cpu_seconds']:.1f} s CPU ({grappa['seconds']:.1f} s wall), "
        f"{grappa['rss_above_baseline_mib']:.0f} MiB",
        f"**{pml['cpu_seconds'] / grappa['cpu_seconds']:.2f}x**",
        f"CPU time (wall {pml['seconds'] / grappa['seconds']:.2f}x); max |difference| of MAP@R, R-Precision, "
        f"Recall@1: {r['max_abs_diff']:.1e}",
    )]


def part_train(size: Size) -> tuple[dict, list[Row]]:
    import bench_inference

    r = bench_inference.train_vs_inference(size.model, size.train_img, size.train_batch, size.train_classes)
    return r, [(
        f"one adaptor set training vs backbone inference, {size.train_img} px, batch {r['batch']}, "
        f"k = {r['classes']:,}",
        f"inference: {r['infer_img_s']:.1f} img/s", f"training: {r['train_img_s']:.1f} img/s",
        f"**{r['ratio']:.2f}x**",
        f"FLOPs vs inference: training {r['flop_ratio_frozen']:.2f}x (frozen backbone: activation gradients "
        f"only), {r['flop_ratio_weight_grads']:.2f}x if its weights trained; forward with autograd alone "
        f"{r['train_forward_img_s']:.1f} img/s",
    )]


def part_extract(size: Size) -> tuple[dict, list[Row]]:
    import bench_inference

    r = bench_inference.extract_vs_bare(size.model, size.extract_img, size.extract_images, size.extract_batch,
                                        size.extract_workers)
    return r, [(
        f"grappa extract vs bare model(x), {r['images']} JPEGs 500x375, {size.extract_img} px, "
        f"batch {r['batch']}",
        f"bare loop on pre-decoded tensors: {r['bare_img_s']:.1f} img/s",
        f"extract after start-up: {r['extract_steady_img_s']:.1f} img/s with {r['workers']} workers, "
        f"{r['extract_inline_steady_img_s']:.1f} img/s decoding inline",
        f"**{r['ratio_steady']:.2f}x** ({r['ratio_inline_steady']:.2f}x inline)",
        f"target >= 0.85 {'met' if r['ratio_steady'] >= 0.85 else 'NOT met'}; decoding + transform alone "
        f"{r['decode_img_s']:.0f} img/s in one process, on the cores the model uses; counting worker start-up "
        f"{r['ratio']:.2f}x; features identical (max |diff| {r['max_abs_diff']:.0e})",
    )]


def part_eval(size: Size) -> tuple[dict, list[Row]]:
    import bench_eval

    r = bench_eval.measure(size.eval_model, size.eval_img, size.eval_images, size.eval_models, threads=THREADS)
    return r, [
        (f"grappa eval of {r['models']} models x {r['tasks']} tasks ({r['unique_images']} distinct JPEGs), "
         f"{r['model']} {r['img_size']} px",
         f"decoding per model and task: {r['uncached_s']:.1f} s",
         f"pixel cache: {r['cached_total_s']:.1f} s (build {r['cache_build_s']:.1f} s)",
         f"**{r['speedup_total']:.2f}x**", f"max |difference| {r['max_abs_diff_cached_vs_uncached']:.0e}"),
        ("embedding from the pixel cache vs bare model(x) on the same tensors",
         f"bare: {r['bare_img_s']:.1f} img/s", f"cached: {r['cached_embed_img_s']:.1f} img/s",
         f"**{r['ratio_cached_over_bare']:.2f}x**",
         f"target >= 0.85 {'met' if r['ratio_cached_over_bare'] >= 0.85 else 'NOT met'}"),
    ]


def part_demo(size: Size) -> tuple[dict, list[Row]]:
    """The demo's rows (``bench_demo.py --rows``): ``grappa demo`` in one process, quiet and beside two
    busy processes, its estimate, and an added task against the first run; grappa's own thread choice."""
    import tempfile

    import bench_demo

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as workdir:
        r = bench_demo.measure_rows(Path(workdir), size.demo_scale)
    one, one_loaded, inc = r["one"], r["one_loaded"], r["increment"]
    estimated = sum(one["estimate_s"].values())
    actual = sum(one["stage_s"].get(stage, 0.0) for stage in one["estimate_s"])
    return r, [
        (f"`grappa demo` ({size.demo_scale}), one process", "target: 60 s",
         f"{one['wall_s']:.0f} s quiet, peak RSS {one['max_process_rss_mib']} MiB",
         f"**{60 / one['wall_s']:.2f}x**", "target wall over measured wall (target ≥ 1); RSS target < 1907 MiB"),
        ("the same demo beside 2 CPU-bound processes", f"quiet: {one['wall_s']:.0f} s",
         f"loaded: {one_loaded['wall_s']:.0f} s", f"**{one['wall_s'] / one_loaded['wall_s']:.2f}x**",
         "target: loaded at most 3x the quiet time (ratio ≥ 0.33)"),
        ("the demo's estimate vs the stages it priced", f"actual: {actual:.0f} s", f"estimated: {estimated:.0f} s",
         f"**{estimated / max(actual, 1e-9):.2f}x**", "target: within 30 % (0.7-1.3)"),
        ("an added task (`task add shapes --train`, `run`) vs the first run", f"first run: {inc['first_run_s']} s",
         f"increment: {inc['increment_s']} s (estimated {inc['increment_estimated_s']} s)",
         f"**{inc['first_run_s'] / inc['increment_s']:.2f}x**", "target: the increment at most 0.5x (ratio ≥ 2)"),
    ]


def part_project(size: Size) -> tuple[dict, list[Row]]:
    """A new user's first project (``default_project.py``): ``grappa init --backbone efficientnet_lite0``
    on real tasks, every default kept, and ``grappa run`` in one process; grappa's own thread choice."""
    import tempfile

    import default_project

    tasks = [t for t in size.project_tasks.split(",") if t]
    with tempfile.TemporaryDirectory(prefix="bench-project-") as workdir:
        r = default_project.measure(Path(workdir), tasks, size.project_size, "val", estimate_only=False)
    r.pop("status")
    announced = r["estimate"].get("seconds", {})
    actual = sum(r["stage_s"].get(stage) or 0.0 for stage in announced)
    diffs = {t: v["r_precision"] for t, v in r["default_minus_backbone"].items() if t != "model"}
    images = sum(r["images"].values())
    return r, [
        (f"a default project on a CPU ({images:,} images: {size.project_tasks})", "target: 60 min",
         f"{r['wall_s'] / 60:.1f} min, peak RSS {r['peak_rss_mib']:,.0f} MiB",
         f"**{3600 / r['wall_s']:.2f}x**", "target wall over measured wall (target ≥ 1)"),
        ("its estimate after extraction vs the stages it priced", f"actual: {actual:.0f} s",
         f"estimated: {sum(announced.values()):.0f} s", f"**{sum(announced.values()) / max(actual, 1e-9):.2f}x**",
         "target: within 30 % (0.7-1.3)"),
        ("its default model vs the backbone, RP per task", "target: ≥ 0 on every task",
         ", ".join(f"{t} {d:+.1f}" for t, d in diffs.items()), f"**{min(diffs.values()):+.1f}**",
         "the lowest task's difference, RP points (validation classes)"),
    ]


PARTS: dict[str, Callable[[Size], tuple[dict, list[Row]]]] = {
    "input": part_input, "compile": part_compile, "model": part_model, "kmeans": part_kmeans,
    "metrics": part_metrics, "train": part_train, "extract": part_extract, "eval": part_eval, "demo": part_demo,
    "project": part_project,
}
#: parts that run only when named in ``--only`` (``project`` takes about half an hour at the default size)
OPT_IN = {"project"}


def markdown(header: dict[str, Any], rows: list[Row]) -> str:
    lines = [
        f"## All benchmarks ({header['date']}, {header['machine']})", "",
        f"torch {header['torch']}, size `{header['size']}`, {header['threads']} intra-op thread(s), "
        f"{header['seconds']:.0f} s in all; load average {header['load_before']} before the run.", "",
        "Ratio: candidate over baseline in speed (above 1: the candidate is faster), except M* vs M (latency).", "",
        "| comparison | baseline | candidate | ratio | notes |", "|---|---|---|---:|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the small preset: a 2-core CPU in a few minutes")
    parser.add_argument("--size", default=None, help="preset and/or field=value overrides (see the docstring)")
    parser.add_argument("--only", default=None,
                        help=f"comma list of parts: {', '.join(PARTS)} (without it: all but {', '.join(OPT_IN)})")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (torch, faiss, BLAS); 1 gives steady numbers on a shared machine")
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    spec = ",".join(filter(None, ["small" if args.small else "", args.size or ""])) or "default"
    size = parse_size(spec)
    only = [p.strip() for p in args.only.split(",")] if args.only else [p for p in PARTS if p not in OPT_IN]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")

    global THREADS
    THREADS = args.threads
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    header = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "size": spec,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU used",
              "load_before": " / ".join(f"{x:.1f}" for x in os.getloadavg()), "threads": args.threads}
    results: dict[str, Any] = {"size": dataclasses.asdict(size)}
    rows: list[Row] = []
    for name in only:
        print(f"[{time.perf_counter() - started:7.1f} s] {name}", file=sys.stderr, flush=True)
        try:
            results[name], part_rows = PARTS[name](size)
            rows += part_rows
        except Exception as exc:  # one broken part must not lose the others' numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            rows.append((name, "failed", f"{type(exc).__name__}: {exc}"[:120], "-", "see stderr"))
    header["seconds"] = time.perf_counter() - started
    results["header"] = header
    text = markdown(header, rows)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
