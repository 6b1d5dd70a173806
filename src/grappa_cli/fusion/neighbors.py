"""The k-NN graph of the training set in the current model's feature space (Grappa-N).

Pairs ``(x_i, x_j)`` with ``x_j`` among the k nearest neighbours of ``x_i`` (section 3.5). The
graph is recomputed from the current M* at the start of every epoch. A pair is never
``(i, i)``: the query is removed by index, so exact duplicates of an image (other indices,
same pixels) remain valid neighbours while the image itself never is.

The training set is embedded from the image files (:func:`embed_paths`, the evaluation
transform in DataLoader workers) or, when the image cache exists, from the cached squares
(:func:`embed_cached`: shards read in storage order, the evaluation crop taken on the device).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from grappa_cli.errors import TrainingError

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch
    from PIL import Image
    from torch import nn

    from grappa_cli.data.cached_training import TrainingCache
    from grappa_cli.runtime import Precision


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
    model: nn.Module, paths: Sequence[str], transform: Callable[[Image.Image], torch.Tensor], *, batch_size: int,
    num_workers: int, device: torch.device, amp: bool | Precision = True, min_side: int | None = None,
) -> np.ndarray:
    """Embeddings of ``paths`` under ``model`` (L2-normalised, float32); undecodable images are zero.

    Under torchrun each rank embeds a disjoint share and the shares are gathered, so every
    rank builds the same graph.
    """
    import torch

    from grappa_cli.data.images import ImageDataset, make_loader
    from grappa_cli.runtime import HostCopies, autocast
    from grappa_cli.train import distributed

    share = distributed.shard_range(len(paths))
    dataset = ImageDataset(paths, transform, list(share), min_side=min_side)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=device)
    out: np.ndarray | None = None
    copies = HostCopies()
    was_training = model.training
    model.eval()

    def place(ready: list[tuple[np.ndarray, np.ndarray]]) -> None:
        nonlocal out
        for z, indices in ready:
            if out is None:
                out = np.zeros((len(paths), z.shape[1]), np.float32)
            out[indices] = z

    with torch.inference_mode():
        for batch in loader:
            if not len(batch.indices):
                continue
            with autocast(device, amp):
                z = model(batch.images.to(device, non_blocking=True)).float()
            place(copies.push(torch.nn.functional.normalize(z, dim=-1), batch.indices.numpy()))
        place(copies.flush())
    model.train(was_training)
    if out is None:
        raise TrainingError("no training image could be decoded to build the k-NN graph")
    if distributed.world_size() > 1:
        gathered = distributed.all_gather_concat(torch.from_numpy(out[share.start:share.stop]))
        out = gathered.numpy()
    return out


def embed_cached(
    model: nn.Module, cache: TrainingCache, rows: np.ndarray, view: Callable[[torch.Tensor], torch.Tensor], *,
    batch_size: int, num_workers: int, device: torch.device, amp: bool | Precision = True,
) -> np.ndarray:
    """L2-normalised float32 embeddings ``[len(rows), D]`` of cached training rows ``rows``.

    ``cache`` is a :class:`~grappa_cli.data.cached_training.TrainingCache` and ``view`` maps
    uint8 batches on the device to model inputs (a ``CenterView``). Each rank embeds a
    contiguous share of ``rows`` in the order the cache stores them (whole shards per read);
    the shares are gathered, so every rank builds the same graph.
    """
    import torch

    from grappa_cli.data.cache_dataset import make_cached_loader
    from grappa_cli.runtime import HostCopies, autocast
    from grappa_cli.train import distributed

    rows = np.asarray(rows, dtype=np.int64)
    share = distributed.shard_range(len(rows))
    dataset = cache.images(rows[share.start : share.stop])
    order = np.argsort(dataset.cache_rows, kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    loader = make_cached_loader(dataset, batches, num_workers=num_workers, pin_memory=device.type == "cuda")
    mine: np.ndarray | None = None
    copies = HostCopies()
    was_training = model.training
    model.eval()

    def place(ready: list[tuple[np.ndarray, list[int]]]) -> None:
        nonlocal mine
        for z, positions in ready:
            if mine is None:
                mine = np.zeros((len(dataset), z.shape[1]), np.float32)
            mine[positions] = z

    with torch.inference_mode():
        for positions, batch in zip(batches, loader, strict=True):
            with autocast(device, amp):
                z = model(view(batch.to(device, non_blocking=True)))
            place(copies.push(torch.nn.functional.normalize(z.float(), dim=-1), positions))
        place(copies.flush())
    model.train(was_training)
    if mine is None:
        raise TrainingError("no cached training image to build the k-NN graph from",
                            hint="check the training set (`grappa cache info`)")
    if distributed.world_size() > 1:
        return distributed.all_gather_concat(torch.from_numpy(mine)).numpy()
    return mine
