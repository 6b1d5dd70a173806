"""The k-NN graph of the training set in the current model's feature space (Grappa-N).

Pairs ``(x_i, x_j)`` with ``x_j`` among the k nearest neighbours of ``x_i`` (section 3.5). The
graph is recomputed from the current M* at the start of every epoch. A pair is never
``(i, i)``: the query is removed by index, so exact duplicates of an image (other indices,
same pixels) remain valid neighbours while the image itself never is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from grappa_cli.errors import TrainingError


def knn_graph(embeddings: np.ndarray, k: int) -> np.ndarray:
    """``[n, k]`` indices of each row's k nearest other rows by cosine similarity (exact, faiss)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    if k >= n:
        raise TrainingError(f"{k} neighbours need more than {n} training images", hint="lower fuse.neighbors")
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(x, k + 1)
    graph = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        row = found[i]
        row = row[(row != i) & (row >= 0)]
        if len(row) < k:  # cannot happen with k < n and exact search; kept as a guard
            raise TrainingError(f"image {i} has fewer than {k} neighbours")
        graph[i] = row[:k]
    return graph


def sample_pairs(graph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One pair per image: ``(i, j)`` with ``j`` drawn uniformly among i's k neighbours."""
    n, k = graph.shape
    choice = rng.integers(0, k, size=n)
    return np.stack([np.arange(n), graph[np.arange(n), choice]], axis=1)


def embed_paths(
    model: Any, paths: Sequence[str], transform: Any, *, batch_size: int, num_workers: int, device: Any,
    amp: bool = True, min_side: int | None = None,
) -> np.ndarray:
    """Embeddings of ``paths`` under ``model`` (L2-normalised, float32); undecodable images are zero.

    Under torchrun each rank embeds a disjoint share and the shares are gathered, so every
    rank builds the same graph.
    """
    import torch

    from grappa_cli.data.images import ImageDataset, make_loader
    from grappa_cli.runtime import autocast
    from grappa_cli.train import distributed

    share = distributed.shard_range(len(paths))
    dataset = ImageDataset(paths, transform, list(share), min_side=min_side)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=device)
    dim = None
    out: np.ndarray | None = None
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            if not len(batch.indices):
                continue
            with autocast(device, amp):
                z = model(batch.images.to(device, non_blocking=True)).float()
            z = torch.nn.functional.normalize(z, dim=-1).cpu().numpy()
            if out is None:
                dim = z.shape[1]
                out = np.zeros((len(paths), dim), np.float32)
            out[batch.indices.numpy()] = z
    model.train(was_training)
    if out is None:
        raise TrainingError("no training image could be decoded to build the k-NN graph")
    if distributed.world_size() > 1:
        gathered = distributed.all_gather_concat(torch.from_numpy(out[share.start:share.stop]))
        out = gathered.numpy()
    return out
