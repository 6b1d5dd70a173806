"""Datasets that read training images from the image cache (:mod:`grappa_cli.data.cache`).

Items are uint8 tensors ``[3, S, S]`` (the cached central squares); training augments whole
batches afterwards with :mod:`grappa_cli.data.gpu_augment`, on the GPU when there is one.
Datasets are addressed by training-set rows (rows of ``features/train``, which is what
pseudo-labels and k-NN graphs index), whatever order the cache stores them in.

Reading: DataLoader workers are spawned, so each opens the zarr store itself, lazily, on its
first read. A batch's rows are grouped by shard; a shard that contributes at least
``min_chunk_rows`` rows, or is already held, is read whole (one file read, decompressed once)
and kept in a small per-worker LRU of ``chunk_cache`` shards; the other rows are read one
image each (one inner chunk of the shard). With :class:`ChunkShuffleBatchSampler` most reads
are whole shards; k-NN partners, which lie anywhere, are single-image reads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict, Unpack, cast

import numpy as np
import torch

from grappa_cli.data.cache import read_layout
from grappa_cli.data.chunk_sampler import ChunkShuffleBatchSampler
from grappa_cli.errors import DataError
from grappa_cli.runtime import ignore_interrupts, spawn_context

if TYPE_CHECKING:  # annotations only
    from zarr import Array

    from grappa_cli.data.images import WorkerOptions

#: One item of a cached dataset: an image, ``(image, row)``, ``(anchor, partner)`` or
#: ``(anchor, partner, anchor row, partner row)`` (uint8 ``[3, S, S]`` images).
CachedItem = (torch.Tensor | tuple[torch.Tensor, int] | tuple[torch.Tensor, torch.Tensor]
              | tuple[torch.Tensor, torch.Tensor, int, int])


class SamplerOptions(TypedDict, total=False):
    """Keyword arguments of :class:`ChunkShuffleBatchSampler` besides rows and batch size."""

    window: int
    seed: int
    drop_last: bool
    rank: int
    world_size: int


class Batches(Protocol):
    """Batches of dataset positions, and how many there are (a batch sampler, or a plain list)."""

    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...


__all__ = ["CachedImageDataset", "CachedPairDataset", "collate_cached", "make_cached_loader"]


class CachedImageDataset(torch.utils.data.Dataset[CachedItem]):
    """Cached images of the training rows ``indices`` (default: every readable image).

    ``dataset[p]`` is the uint8 tensor ``[3, S, S]`` of training row ``indices[p]``, or
    ``(image, training_row)`` with ``return_index``. Rows whose image could not be decoded are
    refused (they hold no pixels).
    """

    def __init__(
        self, store_path: Path | str, key: str = "cache/train", indices: Sequence[int] | np.ndarray | None = None,
        *, return_index: bool = False, chunk_cache: int = 8, min_chunk_rows: int | None = None,
    ) -> None:
        layout = read_layout(store_path, key)
        self.layout = layout
        self.store_path = str(store_path)
        self.key = key
        self.size = layout.size
        self.chunk_rows = layout.chunk_rows
        self.indices = layout.valid_train_rows() if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= layout.n):
            raise DataError(f"training rows must lie in [0, {layout.n}) for {key}",
                            hint="pass rows of features/train")
        #: the cache row each position reads (what a chunk-aware sampler needs)
        self.cache_rows = layout.cache_rows_of(self.indices)
        unreadable = int((~layout.valid[self.cache_rows]).sum())
        if unreadable:
            raise DataError(f"{unreadable} of the requested images could not be decoded when {key} was built",
                            hint="pass only readable rows (CachedImageDataset(...).layout.valid_train_rows())")
        self.return_index = return_index
        self.chunk_cache = max(1, int(chunk_cache))
        self.min_chunk_rows = max(1, self.chunk_rows // 8) if min_chunk_rows is None else int(min_chunk_rows)
        self._images: Array | None = None
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_images"] = None  # every process opens its own handle
        state["_chunks"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def batch_sampler(self, batch_size: int, **kwargs: Unpack[SamplerOptions]) -> ChunkShuffleBatchSampler:
        """A :class:`ChunkShuffleBatchSampler` over this dataset (``kwargs``: window, seed, ...)."""
        return ChunkShuffleBatchSampler(self.cache_rows, self.chunk_rows, batch_size, **kwargs)

    # -- reading --------------------------------------------------------------------------------
    def _array(self) -> Array:
        if self._images is None:
            import zarr

            # the cache keeps an array, never a group, at "<key>/images"
            self._images = cast("Array", zarr.open_group(self.store_path, mode="r")[f"{self.key}/images"])
        return self._images

    def _chunk(self, chunk: int) -> np.ndarray:
        if chunk in self._chunks:
            self._chunks.move_to_end(chunk)
            return self._chunks[chunk]
        start = chunk * self.chunk_rows
        data = np.asarray(self._array()[start : start + self.chunk_rows])
        self._chunks[chunk] = data
        while len(self._chunks) > self.chunk_cache:
            self._chunks.popitem(last=False)
        return data

    def read_cache_rows(self, rows: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """HWC uint8 arrays of the given cache rows, in the given order (see module docstring)."""
        rows = np.asarray(rows, dtype=np.int64)
        out: list[np.ndarray | None] = [None] * len(rows)
        chunks = rows // self.chunk_rows
        for chunk in np.unique(chunks):
            where = np.flatnonzero(chunks == chunk)
            if int(chunk) in self._chunks or len(where) >= self.min_chunk_rows:
                data = self._chunk(int(chunk))
                for i in where:
                    out[i] = data[rows[i] - chunk * self.chunk_rows]
            else:
                array = self._array()
                for i in where:
                    out[i] = np.asarray(array[int(rows[i])])
        return out  # type: ignore[return-value]

    @staticmethod
    def _chw(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).permute(2, 0, 1)

    def __getitems__(self, positions: Sequence[int] | np.ndarray) -> list[CachedItem]:
        positions = np.asarray(positions, dtype=np.int64)
        images = [self._chw(a) for a in self.read_cache_rows(self.cache_rows[positions])]
        if self.return_index:
            return [(im, int(self.indices[p])) for im, p in zip(images, positions, strict=True)]
        return cast("list[CachedItem]", images)  # list is invariant: a list of images is a list of items

    def __getitem__(self, position: int) -> CachedItem:
        return self.__getitems__([position])[0]


class CachedPairDataset(CachedImageDataset):
    """Pairs of different images: each anchor with one of its partners (Grappa-N's neighbours).

    ``partners[i]`` lists candidate training rows for training row ``i`` (e.g. its k nearest
    neighbours; -1 pads). Unreadable candidates and ``i`` itself are ignored. The partner of
    ``i`` in an epoch is drawn uniformly from ``(seed, epoch, i)``: call :meth:`set_epoch`
    before iterating (workers are spawned per epoch and receive the current epoch). Items are
    ``(anchor, partner)`` or ``(anchor, partner, i, j)`` with ``return_index``.
    """

    def __init__(
        self, store_path: Path | str, key: str, indices: Sequence[int] | np.ndarray | None,
        partners: np.ndarray, *, seed: int = 0, return_index: bool = False, chunk_cache: int = 8,
        min_chunk_rows: int | None = None,
    ) -> None:
        super().__init__(store_path, key, indices, return_index=return_index, chunk_cache=chunk_cache,
                         min_chunk_rows=min_chunk_rows)
        partners = np.asarray(partners, dtype=np.int64)
        if partners.ndim != 2 or partners.shape[0] != self.layout.n:
            raise DataError(f"partners must be [{self.layout.n}, k] training rows, got {partners.shape}",
                            hint="pass one row of candidates per training image")
        valid_train = np.zeros(self.layout.n, bool)
        valid_train[self.layout.rows[self.layout.valid]] = True
        usable = (partners >= 0) & (partners < self.layout.n)
        usable &= valid_train[np.clip(partners, 0, self.layout.n - 1)]
        usable &= partners != np.arange(self.layout.n)[:, None]
        lonely = int((~usable[self.indices].any(axis=1)).sum()) if len(self.indices) else 0
        if lonely:
            raise DataError(f"{lonely} anchors have no readable partner other than themselves",
                            hint="rebuild the neighbour graph or drop those anchors")
        self.partners = partners
        self.usable = usable
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def partner_of(self, train_row: int) -> int:
        candidates = self.partners[train_row][self.usable[train_row]]
        pick = np.random.default_rng([self.seed, self.epoch, int(train_row)]).integers(len(candidates))
        return int(candidates[pick])

    def __getitems__(self, positions: Sequence[int] | np.ndarray) -> list[CachedItem]:
        anchors = [int(self.indices[p]) for p in positions]
        partners = [self.partner_of(i) for i in anchors]
        rows = self.layout.cache_rows_of(np.asarray(anchors + partners, dtype=np.int64))
        images = [self._chw(a) for a in self.read_cache_rows(rows)]
        n = len(anchors)
        if self.return_index:
            return [(images[k], images[n + k], anchors[k], partners[k]) for k in range(n)]
        return [(images[k], images[n + k]) for k in range(n)]


def _stack_chw(images: Sequence[torch.Tensor]) -> torch.Tensor:
    # items are CHW views of HWC arrays: stacking the HWC views is a plain copy, and the result
    # is a channels_last [B, 3, S, S] batch
    return torch.stack([im.permute(1, 2, 0) for im in images]).permute(0, 3, 1, 2)


def collate_cached(items: Sequence[CachedItem]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Stack images into uint8 ``[B, 3, S, S]`` batches (channels_last); indices into int64 tensors."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return _stack_chw(cast("Sequence[torch.Tensor]", items))  # a dataset's items all have one shape
    columns = list(zip(*cast("Sequence[tuple[torch.Tensor | int, ...]]", items), strict=True))
    return tuple(
        _stack_chw(cast("tuple[torch.Tensor, ...]", col)) if isinstance(col[0], torch.Tensor)
        else torch.as_tensor(col, dtype=torch.long)
        for col in columns
    )


def make_cached_loader(
    dataset: CachedImageDataset, batch_sampler: Batches, *, num_workers: int = 0,
    pin_memory: bool = False, prefetch_factor: int = 4,
) -> torch.utils.data.DataLoader:
    """A DataLoader over a cached dataset (spawned workers; call ``set_epoch`` on sampler and dataset)."""
    from grappa_cli.runtime import loader_workers

    num_workers = loader_workers(num_workers, len(batch_sampler), len(dataset))
    kwargs: WorkerOptions = {}
    if num_workers > 0:
        kwargs.update({"multiprocessing_context": spawn_context(), "persistent_workers": False,
                       "prefetch_factor": prefetch_factor, "worker_init_fn": ignore_interrupts})
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                                       collate_fn=collate_cached, pin_memory=pin_memory, **kwargs)
