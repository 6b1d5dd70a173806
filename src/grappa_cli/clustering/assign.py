"""Exact nearest-centroid assignment and the inertia of a partition.

Every backend ends with this same step, so a stored label is always the index of the
nearest stored centroid (the paper's ``P_i(x) = argmin_c ||z - c||``) and the inertia is
computed the same way whichever backend ran.
"""

from __future__ import annotations

from functools import cache

import faiss
import numpy as np

from grappa_cli.clustering.vectors import BLOCK_ROWS


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


def flat_index(d: int, *, use_gpu: bool | None = None) -> faiss.Index:
    """An exact L2 index, on the GPU when faiss sees one (``use_gpu=None``: automatic)."""
    if use_gpu is None:
        use_gpu = gpu_count() > 0
    if use_gpu:
        return faiss.GpuIndexFlatL2(gpu_resources(), d)
    return faiss.IndexFlatL2(d)


@cache
def gpu_resources() -> faiss.StandardGpuResources:
    """One ``StandardGpuResources`` per process (scratch memory, streams), shared by every GPU index."""
    return faiss.StandardGpuResources()


def nearest(
    x: np.ndarray, centroids: np.ndarray, *, use_gpu: bool | None = None, index: faiss.Index | None = None,
) -> np.ndarray:
    """Index of the nearest centroid of each row of ``x`` (int64 [n]).

    ``index``: an exact L2 index to reuse (it is emptied first); by default a new one.
    """
    if index is None:
        index = flat_index(centroids.shape[1], use_gpu=use_gpu)
    index.reset()
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], BLOCK_ROWS):
        block = np.ascontiguousarray(x[start:start + BLOCK_ROWS], dtype=np.float32)
        _, idx = index.search(block, 1)
        labels[start:start + block.shape[0]] = idx[:, 0]
    return labels


def inertia(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances from each point to its assigned centroid, in float64.

    Computed from the differences rather than faiss's ``|x|² + |c|² - 2 x·c`` so that it is
    exact to float64 rounding, not to float32 cancellation.
    """
    total = 0.0
    for start in range(0, x.shape[0], BLOCK_ROWS):
        block = np.asarray(x[start:start + BLOCK_ROWS], dtype=np.float64)
        diff = block - centroids[labels[start:start + block.shape[0]]].astype(np.float64)
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def mean_centroids(x: np.ndarray, labels: np.ndarray, k: int, previous: np.ndarray) -> np.ndarray:
    """Means of the points of each cluster (float32 [k, D]); an empty cluster keeps ``previous``.

    Sums run over points sorted by label (``np.add.reduceat``), accumulated in float64.
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    present, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    out = np.array(previous, dtype=np.float32, copy=True)
    for lo in range(0, present.size, 4096):  # groups of clusters keep the gathered block small
        hi = min(lo + 4096, present.size)
        first, last = starts[lo], starts[hi - 1] + counts[hi - 1]
        block = np.asarray(x[order[first:last]], dtype=np.float32)
        sums = np.add.reduceat(block, starts[lo:hi] - first, axis=0, dtype=np.float64)
        out[present[lo:hi]] = (sums / counts[lo:hi, None]).astype(np.float32)
    return out
