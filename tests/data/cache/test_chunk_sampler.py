"""The chunk-aware batch sampler: coverage, dependence on (seed, epoch), locality, ranks."""

from __future__ import annotations

import numpy as np
import pytest

from grappa_cli.data.chunk_sampler import ChunkShuffleBatchSampler


def permuted_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def epoch_batches(sampler: ChunkShuffleBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_every_position_exactly_once_per_epoch() -> None:
    rows = permuted_rows(1000)[:937]  # a subset of the cache rows, in any order
    sampler = ChunkShuffleBatchSampler(rows, chunk_rows=32, batch_size=50, window=4, seed=3)
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        flat = [p for b in batches for p in b]
        assert sorted(flat) == list(range(937))
        assert len(batches) == len(sampler) == 19 and all(len(b) == 50 for b in batches[:-1])


def test_order_depends_on_seed_and_epoch_only() -> None:
    rows = np.arange(500)
    a = ChunkShuffleBatchSampler(rows, 16, 20, seed=1)
    b = ChunkShuffleBatchSampler(rows, 16, 20, seed=1)
    c = ChunkShuffleBatchSampler(rows, 16, 20, seed=2)
    assert epoch_batches(a, 0) == epoch_batches(b, 0)
    assert epoch_batches(a, 5) == epoch_batches(b, 5)
    assert epoch_batches(a, 0) != epoch_batches(a, 1)
    assert epoch_batches(a, 0) != epoch_batches(c, 0)
    # iterating twice without set_epoch repeats the epoch
    assert list(a) == list(a)


def test_batches_stay_within_a_few_chunks_but_mix_rows() -> None:
    chunk_rows, window = 16, 4
    rows = np.arange(1024)
    sampler = ChunkShuffleBatchSampler(rows, chunk_rows, 32, window=window, seed=0)
    batches = epoch_batches(sampler, 0)
    for batch in batches:
        chunks = {int(rows[p]) // chunk_rows for p in batch}
        assert len(chunks) <= 2 * window  # at most two consecutive windows
    # rows are shuffled inside windows: consecutive positions are not consecutive rows
    first = np.asarray(batches[0])
    assert np.mean(np.abs(np.diff(first)) == 1) < 0.3
    # and the chunk order changes between epochs
    first_chunks = [{int(rows[p]) // chunk_rows for p in epoch_batches(sampler, e)[0]} for e in range(4)]
    assert len({frozenset(c) for c in first_chunks}) > 1


def test_ranks_split_global_batches() -> None:
    rows = permuted_rows(300)
    world, per_rank = 3, 16
    samplers = [ChunkShuffleBatchSampler(rows, 20, per_rank, seed=4, drop_last=True, rank=r, world_size=world)
                for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    per = [list(s) for s in samplers]
    assert all(len(p) == 300 // (world * per_rank) == len(samplers[0]) for p in per)
    single = ChunkShuffleBatchSampler(rows, 20, per_rank * world, seed=4, drop_last=True)
    single.set_epoch(2)
    for step, global_batch in enumerate(single):
        assert [p for r in range(world) for p in per[r][step]] == global_batch
    flat = [p for rank_batches in per for b in rank_batches for p in b]
    assert len(flat) == len(set(flat)) == 300 // 48 * 48


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="drop_last"):
        ChunkShuffleBatchSampler(np.arange(10), 4, 2, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ChunkShuffleBatchSampler(np.arange(10), 4, 2, rank=2, world_size=2, drop_last=True)
    with pytest.raises(ValueError):
        ChunkShuffleBatchSampler(np.arange(10), 4, 0)
    assert list(ChunkShuffleBatchSampler(np.arange(0), 4, 2)) == []
