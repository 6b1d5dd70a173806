"""Gallery search: recall and speed of the flat, IVF and HNSW indexes of ``grappa index``.

Side by side in one run, on synthetic unit vectors shaped like image embeddings (class
clusters on a low-dimensional manifold, see :func:`embeddings_like`), with queries drawn
from the same distribution but not in the gallery. For each index: build time, size of the
index file, queries per second (one batch of ``--queries`` queries, all threads) and
recall@1 / recall@10 against the exact (flat) result. IVF is shown at several ``nprobe``,
HNSW at several ``ef_search``, with the defaults ``grappa index`` picks marked ``*``
(nlist = 4 sqrt(n), nprobe = max(16, sqrt(nlist)), M = 32, ef_construction = 200,
ef_search = 128).

    python benchmarks/bench_index.py                 # 50 000 x 256, 1000 queries (~2 min on 2 cores)
    python benchmarks/bench_index.py --n 1000000     # closer to a real large gallery (much longer)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from grappa_cli.serving.vector_index import IndexSettings, build_index, configure_search, save_index, search


def embeddings_like(n: int, dim: int, *, classes: int, latent: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors with the structure of image embeddings: class clusters on a low-dimensional manifold.

    Points ``z`` of a ``latent``-dimensional mixture of ``classes`` Gaussians (noise ``spread``)
    are mapped to ``dim`` dimensions by a fixed random matrix, plus isotropic noise, then
    normalised. Neighbourhoods overlap as in real embeddings (with ``spread = 1`` an exact
    search's top-1 is about a third of the time in another class), so approximate indexes
    show their real recall/speed trade-off; well separated clusters would make every index
    look exact.
    """
    mapping = np.random.default_rng(7).normal(size=(latent, dim))
    centres = np.random.default_rng(8).normal(size=(classes, latent))
    rng = np.random.default_rng(seed)
    z = centres[rng.integers(0, classes, n)] + spread * rng.normal(size=(n, latent))
    x = z @ mapping + 0.3 * np.sqrt(latent) * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found, exact, strict=True)]))


def timed_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    search(index, queries[:10], k)  # warm-up
    start = time.perf_counter()
    _, rows = search(index, queries, k)
    return rows, len(queries) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--latent", type=int, default=32, help="intrinsic dimension")
    parser.add_argument("--spread", type=float, default=1.0, help="cluster noise (larger: harder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import faiss

    shape = {"classes": args.classes, "latent": args.latent, "spread": args.spread}
    x = embeddings_like(args.n, args.dim, seed=0, **shape)
    q = embeddings_like(args.queries, args.dim, seed=1, **shape)
    rows = np.arange(args.n)
    rows_out = []
    tmp = Path(tempfile.mkdtemp())

    def add(name: str, settings: IndexSettings, knob: str, values: list[int], default: int | None) -> None:
        start = time.perf_counter()
        training = x if settings.kind == "ivf" else None
        index = build_index(settings, args.dim, [(rows, x)], training)
        build = time.perf_counter() - start
        save_index(index, tmp / f"{name}.faiss")
        size = (tmp / f"{name}.faiss").stat().st_size / 2**20
        for value in values or [None]:
            if knob == "nprobe":
                configure_search(index, nprobe=value)
            elif knob == "ef_search":
                configure_search(index, ef_search=value)
            found, qps = timed_search(index, q, 10)
            rows_out.append({"index": name, knob or "-": value, "default": value is not None and value == default,
                             "build_s": build, "MiB": size, "queries/s": qps, "recall@1": recall(found, exact, 1),
                             "recall@10": recall(found, exact, 10)})

    flat = build_index(IndexSettings("flat"), args.dim, [(rows, x)])
    exact, _ = timed_search(flat, q, 10)
    add("flat", IndexSettings("flat"), "", [], None)
    ivf = IndexSettings("ivf").resolved(args.n)
    add(f"ivf{ivf.nlist}", ivf, "nprobe", sorted({1, 4, ivf.nprobe, 4 * ivf.nprobe, ivf.nlist // 4}), ivf.nprobe)
    hnsw = IndexSettings("hnsw").resolved(args.n)
    add("hnsw32", hnsw, "ef_search", [16, 32, 64, 128, 256], hnsw.ef_search)

    meta = {"n": args.n, "dim": args.dim, "queries": args.queries, **shape, "threads": faiss.omp_get_max_threads()}
    if args.json:
        print(json.dumps({"setup": meta, "rows": rows_out}, indent=2))
        return
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    print(f"{'index':10} {'knob':>14} {'build s':>8} {'MiB':>7} {'queries/s':>10} {'R@1':>6} {'R@10':>6}")
    flat_qps = rows_out[0]["queries/s"]
    for r in rows_out:
        knob = next((f"{k}={v}" for k, v in r.items() if k in ("nprobe", "ef_search")), "")
        mark = "*" if r["default"] else " "
        print(f"{r['index']:10} {knob:>14}{mark}{r['build_s']:8.1f} {r['MiB']:7.1f} {r['queries/s']:10.0f} "
              f"{r['recall@1']:6.3f} {r['recall@10']:6.3f}   ({r['queries/s'] / flat_qps:.1f}x flat)")


if __name__ == "__main__":
    main()
