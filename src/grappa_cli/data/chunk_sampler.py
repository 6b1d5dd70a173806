"""Batches that visit a chunked cache a few chunks at a time, in a new order every epoch.

Reading one random image from a compressed chunk costs decompressing the chunk (or, for the
image cache's sharded layout, a separate small read per image); a fully random order pays
that for every image. :class:`ChunkShuffleBatchSampler` orders an epoch as follows, all drawn
from ``(seed, epoch)``:

1. shuffle the order of the chunks;
2. cut that order into windows of ``window`` consecutive chunks;
3. shuffle the rows of each window's chunks together; concatenate the windows;
4. cut the sequence into batches (with several ranks: global batches of
   ``batch_size * world_size``, rank ``r`` taking the ``r``-th slice of each).

A reader then needs only the chunks of about one window at a time, each read whole once.

Shuffling quality: a batch mixes ``window * chunk_rows`` images rather than the whole set,
and images of one chunk always meet in the same window. Because the image cache stores rows
in a seeded random permutation of the training set, a chunk is itself a random sample, so a
batch is close to a uniform sample; what remains is that co-occurrences within a chunk repeat
every epoch (for 128-row chunks and windows of 8, each image meets ~1,000 of 133k others in
its window). Batch statistics (Barlow Twins' cross-correlation, norm-softmax logits) are
unaffected in expectation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

#: Mixed into the epoch's seed so that this order differs from other samplers seeded alike.
_STREAM = 0xC4C8E


class ChunkShuffleBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions, chunk-aware; call :meth:`set_epoch` before each epoch.

    ``cache_rows[p]`` is the stored row that dataset position ``p`` reads (see
    ``CachedImageDataset.cache_rows``); rows ``[c * chunk_rows, (c + 1) * chunk_rows)`` form
    chunk ``c``. With ``drop_last`` the last incomplete (global) batch is dropped; several
    ranks require it, so that every rank takes the same number of steps.
    """

    def __init__(
        self, cache_rows: Sequence[int] | np.ndarray, chunk_rows: int, batch_size: int, *, window: int = 8,
        seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
    ) -> None:
        if batch_size < 1 or chunk_rows < 1 or window < 1:
            raise ValueError("batch_size, chunk_rows and window must be >= 1")
        if world_size > 1 and not drop_last:
            raise ValueError("with several ranks use drop_last=True (every rank must take the same steps)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        rows = np.asarray(cache_rows, dtype=np.int64)
        chunks = rows // int(chunk_rows)
        order = np.argsort(chunks, kind="stable")
        ids, starts = np.unique(chunks[order], return_index=True)
        self._groups = np.split(order, starts[1:]) if len(rows) else []
        self.chunk_ids = ids
        self.size = len(rows)
        self.batch_size = int(batch_size)
        self.window = int(window)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self) -> np.ndarray:
        """Every position once, in this epoch's chunk-windowed order."""
        rng = np.random.default_rng([self.seed, self.epoch, _STREAM])
        chunk_order = rng.permutation(len(self._groups))
        parts = []
        for start in range(0, len(chunk_order), self.window):
            pool = np.concatenate([self._groups[c] for c in chunk_order[start : start + self.window]])
            parts.append(rng.permutation(pool))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    @property
    def _global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self._global_batch
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order()
        step = self._global_batch
        for start in range(0, len(order), step):
            batch = order[start : start + step]
            if len(batch) < step and self.drop_last:
                return
            mine = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            if len(mine):
                yield mine.tolist()
