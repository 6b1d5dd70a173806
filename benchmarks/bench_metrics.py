"""Leave-one-out retrieval metrics at test-split scale: grappa vs pytorch-metric-learning.

Evaluates N random D-dimensional embeddings in C classes with
``grappa_cli.retrieval.metrics.retrieval_metrics`` and with pytorch-metric-learning's
``AccuracyCalculator`` (k = "max_bin_count", leave-one-out), each in its own process so
peak memory is measured separately. Prints wall and CPU time (on a shared machine the CPU
time of a one-thread run is the steadier measure: wall time also counts waiting for a
core), peak RSS (above the process's footprint once the data exist) and, with ``--tracemalloc``,
the peak of Python/numpy allocations (tracing every allocation slows numpy-heavy code, so
it is off for timing), then checks that MAP@R, R-Precision and Recall@1 agree to 1e-6.

Shapes (``--shape``; ``--all`` runs the three one after the other, pml and grappa side by
side for each):

* ``20k``: 20,000 x 384 in 50 classes (R = 399);
* ``50k``: 50,000 x 384 in 50 classes (R = 999, Food-101's test split);
* ``products``: 60,000 x 384 in 11,300 classes of 5-6 images (Products' test split).

    python benchmarks/bench_metrics.py --all --threads 1
    python benchmarks/bench_metrics.py --shape products
    python benchmarks/bench_metrics.py --small    # 10k x 384, 10 classes (R = 999 too)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

#: name -> (n, classes)
SHAPES = {"20k": (20_000, 50), "50k": (50_000, 50), "products": (60_000, 11_300)}
KEYS = {"map@r": "mean_average_precision_at_r", "r_precision": "r_precision", "recall@1": "precision_at_1"}


def make_data(n: int, dim: int, classes: int, signal: float, seed: int):
    """Random embeddings with a weak class signal (so that the metrics are not all at chance)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    labels = np.concatenate([labels, np.arange(n - len(labels)) % classes])
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32) + signal * centres[labels]
    return x, labels


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(method: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)  # pytorch-metric-learning searches with faiss
    except ImportError:
        pass
    x, labels = make_data(args.n, args.dim, args.classes, args.signal, args.seed)
    if method == "grappa":
        from grappa_cli.retrieval.metrics import retrieval_metrics

        retrieval_metrics(x[:200], labels[:200])  # import faiss and plugins outside the timing
    else:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        x = x / np.linalg.norm(x, axis=1, keepdims=True)  # cosine = L2 order on the unit sphere
    baseline = peak_rss_mib()
    if args.tracemalloc:
        tracemalloc.start()
    start = time.perf_counter()
    cpu_start = time.process_time()
    if method == "grappa":
        result = retrieval_metrics(x, labels, recall_at=(1,), chunk_size=args.chunk_size)
        values = {k: result[k] for k in KEYS}
    else:
        calculator = AccuracyCalculator(
            include=tuple(KEYS.values()), k="max_bin_count", device=torch.device("cpu")
        )
        result = calculator.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))
        values = {k: float(result[v]) for k, v in KEYS.items()}
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    traced = 0
    if args.tracemalloc:
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {
        "method": method,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "values": values,
        "peak_rss_mib": peak_rss_mib(),
        "rss_above_baseline_mib": peak_rss_mib() - baseline,
        "tracemalloc_peak_mib": traced / 2**20,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=50_000, help="number of embeddings")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension (ViT-S/16: 384)")
    parser.add_argument("--classes", type=int, default=50, help="number of equal classes")
    parser.add_argument("--signal", type=float, default=0.3, help="strength of the class offset")
    parser.add_argument("--chunk-size", type=int, default=512, help="queries per block (grappa)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="10,000 embeddings in 10 classes")
    parser.add_argument("--shape", choices=tuple(SHAPES), help="one of the named shapes (sets --n, --classes)")
    parser.add_argument("--all", action="store_true", help="every named shape, one after the other")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace Python/numpy allocations (slows numpy code: times not comparable)")
    parser.add_argument("--skip-pml", action="store_true", help="time grappa only")
    parser.add_argument("--only", choices=("grappa", "pml"), help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.small:
        args.n, args.classes = 10_000, 10
    if args.shape:
        args.n, args.classes = SHAPES[args.shape]
    if args.only:
        print(json.dumps(run_one(args.only, args)))
        return
    shapes = list(SHAPES) if args.all else [None]
    summary = []
    for shape in shapes:
        if shape:
            args.n, args.classes = SHAPES[shape]
        runs = compare(args)
        report(args, runs)
        if len(runs) == 2:
            summary.append((shape or f"{args.n}", runs))
    if len(summary) > 1:
        print("\n| shape | pml CPU s (wall) | grappa CPU s (wall) | speed-up CPU (wall) | max abs diff "
              "| pml MiB | grappa MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for shape, (grappa, pml) in summary:
            print(f"| {shape} | {pml['cpu_seconds']:.1f} ({pml['seconds']:.1f}) | "
                  f"{grappa['cpu_seconds']:.1f} ({grappa['seconds']:.1f}) | "
                  f"{pml['cpu_seconds'] / grappa['cpu_seconds']:.2f}x ({pml['seconds'] / grappa['seconds']:.2f}x) | "
                  f"{max_difference([grappa, pml]):.1e} | "
                  f"{pml['rss_above_baseline_mib']:.0f} | {grappa['rss_above_baseline_mib']:.0f} |")
    if any(max_difference(runs) > 1e-6 for _, runs in summary):
        sys.exit("values disagree by more than 1e-6")


def report(args: argparse.Namespace, runs: list[dict]) -> None:
    """One shape's lines: each method's time, memory and values, then the ratio."""
    sizes = f"{args.n:,} embeddings x {args.dim}, {args.classes:,} classes"
    print(f"{sizes} (largest R = {-(-args.n // args.classes) - 1}), {args.threads} threads")
    print(
        f"{'method':<8} {'seconds':>9} {'CPU s':>7} {'peak RSS MiB':>13} {'RSS above data':>15} "
        f"{'tracemalloc MiB':>16}  values"
    )
    for run in runs:
        values = ", ".join(f"{k}={v:.6f}" for k, v in run["values"].items())
        print(
            f"{run['method']:<8} {run['seconds']:>9.1f} {run['cpu_seconds']:>7.1f} {run['peak_rss_mib']:>13.0f} "
            f"{run['rss_above_baseline_mib']:>15.0f} {run['tracemalloc_peak_mib']:>16.0f}  {values}"
        )
    if len(runs) == 2:
        diff = max_difference(runs)
        print(f"speed-up pml / grappa: {runs[1]['cpu_seconds'] / runs[0]['cpu_seconds']:.2f}x in CPU time, "
              f"{runs[1]['seconds'] / runs[0]['seconds']:.2f}x in wall time; max |difference| = {diff:.2e}")


def max_difference(runs: list[dict]) -> float:
    """Largest absolute difference of any metric between the two runs."""
    return max(abs(runs[0]["values"][k] - runs[1]["values"][k]) for k in KEYS)


def compare(args: argparse.Namespace) -> list[dict]:
    """Run grappa (and, unless ``args.skip_pml``, pytorch-metric-learning) each in its own process."""
    forwarded = [
        f"--n={args.n}",
        f"--dim={args.dim}",
        f"--classes={args.classes}",
        f"--signal={args.signal}",
        f"--chunk-size={args.chunk_size}",
        f"--threads={args.threads}",
        f"--seed={args.seed}",
        *(["--tracemalloc"] if args.tracemalloc else []),
    ]
    runs = []
    for method in ("grappa",) + (() if args.skip_pml else ("pml",)):
        proc = subprocess.run(
            [sys.executable, __file__, "--only", method, *forwarded],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{method} run failed:\n{proc.stderr}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs

if __name__ == "__main__":
    main()
