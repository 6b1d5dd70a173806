"""k-means backends side by side: faiss vs scikit-learn, and how time grows with k.

Part 1 runs grappa's ``faiss`` and ``sklearn`` backends on the same data, same k, same
maximum number of Lloyd iterations, one k-means++ initialisation each, and prints the
time ratio (target: faiss >= 10x faster) and the inertia ratio (target: within 2%).
Part 2 runs k from 256 up to n/2 for ``faiss``, ``minibatch`` and, when the plugin is
importable, ``hkmeans``, and prints seconds and inertia per k.

Data: points drawn around ``--centres`` random unit vectors with Gaussian noise, then
L2-normalised (as the ``cluster`` stage does), so it is clustered but not trivially.

    PYTHONPATH=src python benchmarks/bench_kmeans.py            # default sizes (a few minutes on 2 cores)
    PYTHONPATH=src python benchmarks/bench_kmeans.py --small    # seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "plugins" / "grappa-hkmeans" / "src"))

from grappa_cli.clustering.faiss_kmeans import FaissKMeans  # noqa: E402
from grappa_cli.clustering.sklearn_kmeans import SklearnKMeans, SklearnMiniBatchKMeans  # noqa: E402
from grappa_cli.clustering.vectors import l2_normalize  # noqa: E402


def clustered_data(n: int, dim: int, centres: int, noise: float, seed: int) -> np.ndarray:
    """``n`` unit vectors scattered around ``centres`` random directions."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    owner = rng.integers(0, centres, n)
    x = c[owner] + noise * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return l2_normalize(x)


def timed(backend, x: np.ndarray, k: int, seed: int, niter: int) -> tuple[float, object]:
    start = time.perf_counter()
    result = backend.fit(x, k, seed=seed, niter=niter)
    return time.perf_counter() - start, result


def hkmeans_backend():
    try:
        from grappa_hkmeans.hkmeans import HierarchicalKMeans
    except ImportError:
        return None
    return HierarchicalKMeans()


def compare_backends(n: int, dim: int, k: int, niter: int, *, centres: int = 2000, noise: float = 0.6,
                     seed: int = 0) -> list[tuple[str, float, int, float, int]]:
    """(backend, seconds, iterations, inertia, empty clusters) of faiss then scikit-learn on the same data."""
    x = clustered_data(n, dim, centres, noise, seed)
    rows = []
    for backend in (FaissKMeans(), SklearnKMeans()):
        seconds, result = timed(backend, x, k, seed, niter)
        empty = int((result.sizes() == 0).sum())
        rows.append((backend.name, seconds, result.iterations, result.inertia, empty))
    return rows


def part_one(args: argparse.Namespace) -> None:
    print(f"## faiss vs scikit-learn KMeans: n={args.n}, D={args.dim}, k={args.k}, "
          f"at most {args.niter} iterations, one k-means++ init each\n")
    rows = compare_backends(args.n, args.dim, args.k, args.niter, centres=args.centres, noise=args.noise,
                            seed=args.seed)
    print("| backend | seconds | iterations | inertia | empty clusters |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, iters, inertia, empty in rows:
        print(f"| {name} | {seconds:.2f} | {iters} | {inertia:.2f} | {empty} |")
    (_, t_faiss, _, i_faiss, _), (_, t_sk, _, i_sk, _) = rows
    speedup = t_sk / t_faiss
    ratio = i_faiss / i_sk
    print(f"\nsklearn / faiss time: **{speedup:.1f}x** "
          f"(target >= 10x: {'met' if speedup >= 10 else 'NOT met'}); "
          f"faiss / sklearn inertia: **{ratio:.4f}** (target within 2%: "
          f"{'met' if abs(ratio - 1) <= 0.02 else 'NOT met'})\n")


def part_two(args: argparse.Namespace) -> None:
    n = args.scale_n
    x = clustered_data(n, args.scale_dim, args.centres, args.noise, args.seed + 1)
    ks = [k for k in (256, 1024, 4096, 16384, 65536) if k < n // 2] + [n // 2]
    backends = [FaissKMeans(), SklearnMiniBatchKMeans()]
    hk = hkmeans_backend()
    if hk is not None:
        backends.append(hk)
    print(f"## time vs k: n={n}, D={args.scale_dim}, at most {args.scale_niter} iterations "
          f"(hkmeans: per level)\n")
    header = " | ".join(f"{b.name} s | {b.name} inertia" for b in backends)
    print(f"| k | {header} |")
    print("|---:|" + "---:|" * (2 * len(backends)))
    for k in ks:
        cells = []
        for backend in backends:
            seconds, result = timed(backend, x, k, args.seed, args.scale_niter)
            cells.append(f"{seconds:.2f} | {result.inertia:.1f}")
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)
    if hk is None:
        print("\n(hkmeans not importable: plugins/grappa-hkmeans/src missing)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes, for a quick check")
    parser.add_argument("--n", type=int, default=50_000, help="points in part 1")
    parser.add_argument("--dim", type=int, default=384, help="dimension in part 1 (ViT-S/16: 384)")
    parser.add_argument("--k", type=int, default=1024, help="clusters in part 1")
    parser.add_argument("--niter", type=int, default=20, help="maximum Lloyd iterations in part 1")
    parser.add_argument("--scale-n", type=int, default=10_000, help="points in part 2")
    parser.add_argument("--scale-dim", type=int, default=128, help="dimension in part 2")
    parser.add_argument("--scale-niter", type=int, default=10, help="maximum iterations in part 2")
    parser.add_argument("--centres", type=int, default=2000, help="true centres of the generated data")
    parser.add_argument("--noise", type=float, default=0.6, help="noise norm relative to the unit centres")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=("1", "2"), help="skip part 1 or part 2")
    args = parser.parse_args()
    if args.small:
        args.n, args.dim, args.k, args.niter = 8000, 128, 256, 10
        args.scale_n, args.scale_dim, args.scale_niter, args.centres = 4000, 64, 5, 500
    import faiss
    import sklearn

    print(f"# k-means benchmark ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"faiss {faiss.__version__}, scikit-learn {sklearn.__version__}, "
          f"faiss GPUs: {faiss.get_num_gpus()})\n")
    if args.skip != "1":
        part_one(args)
    if args.skip != "2":
        part_two(args)


if __name__ == "__main__":
    main()
