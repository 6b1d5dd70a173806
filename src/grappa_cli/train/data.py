"""Training batches: a seeded per-epoch shuffle shared by all ranks, and the DataLoader.

Every epoch draws one permutation of the dataset from ``(seed, epoch)``, keeps the first
``floor(n / global_batch) * global_batch`` indices (``drop_last``: every step sees a full
batch, which batch statistics need), and gives rank ``r`` of ``W`` the indices
``r, r + W, r + 2W, ...``. The ``b``-th batch of every rank therefore comes from the same
slice of the permutation, so ``W`` processes with ``batch / W`` items each see exactly the
batches that one process with the whole batch would see.

Workers use the ``spawn`` start method: the project's zarr store runs an event-loop thread
and forking a process with running threads is unsafe. Their seeds come from a generator
seeded by ``(seed, epoch, rank)``.

Datasets that read better in another order (the image cache reads whole shards) bring their
own batch sampler: :func:`make_batch_loader` builds the epoch's DataLoader around any
:class:`EpochBatchSampler`, an object that yields this rank's batches of dataset positions for
the epoch set with ``set_epoch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from grappa_cli.runtime import ignore_interrupts, loader_workers, spawn_context
from grappa_cli.train.rng import derive_seed

if TYPE_CHECKING:  # annotations only
    from grappa_cli.data.images import WorkerOptions

ItemT = TypeVar("ItemT")
ItemT_co = TypeVar("ItemT_co", covariant=True)

__all__ = ["BatchSamplerFactory", "EpochBatchSampler", "EpochShuffleSampler", "SeededSamples", "dataset_length",
           "make_batch_loader", "make_loader"]


def dataset_length(dataset: Dataset) -> int:
    """``len(dataset)``: torch's ``Dataset`` declares no ``__len__``, though every map-style dataset has one."""
    return len(cast(Sized, dataset))


class SeededSamples(Dataset[ItemT_co]):
    """``dataset[i]`` drawn under random generators seeded by ``(seed, i)``: worker-count independent.

    DataLoader workers seed their generators per worker, so the augmentation an item gets
    would depend on which worker loads it, and a run with 2 workers would train other
    weights than one with 0. Here python's ``random``, numpy's and torch's global generators
    are seeded from the epoch's ``seed`` and the item's index just for that item (and put
    back afterwards, so the caller's streams are untouched), which makes every item a pure
    function of ``(seed, epoch, index)``.

    Only torch's CPU generator is seeded (``default_generator``), the one the image transforms
    draw from. ``torch.manual_seed`` would also queue a seeding of every accelerator: with a CUDA
    build and no initialised GPU, each call formats the stack three times, which took about 5 % of an
    adaptor set's training time on the CPU; with a GPU it reseeded the devices' generators on every
    item and left them at the last item's seed.
    """

    def __init__(self, dataset: Dataset[ItemT_co], seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return dataset_length(self.dataset)

    def __getitem__(self, index: int) -> ItemT_co:
        import random

        import numpy as np

        item_seed = derive_seed(self.seed, int(index))
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            random.seed(item_seed)
            np.random.seed(item_seed % (1 << 32))
            torch.default_generator.manual_seed(item_seed)
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class EpochBatchSampler(Protocol):
    """Batches of dataset positions of one rank for the epoch given to :meth:`set_epoch`.

    Every rank must yield the same number of batches (``len``), each of the per-rank batch
    size, and the order must depend only on the sampler's seed, the epoch and the rank.
    """

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[list[int]]: ...


class BatchSamplerFactory(Protocol):
    """Builds the :class:`EpochBatchSampler` of a dataset: ``batch_size`` is per rank."""

    def __call__(self, dataset: Dataset, *, batch_size: int, seed: int, rank: int,
                 world_size: int) -> EpochBatchSampler: ...


class EpochShuffleSampler(Sampler[int]):
    """Indices of this rank for one epoch; call :meth:`set_epoch` before iterating."""

    def __init__(self, size: int, global_batch: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch < world_size or global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not a multiple of the {world_size} processes")
        self.size = int(size)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def steps(self) -> int:
        """Full global batches per epoch."""
        return self.size // self.global_batch

    def __len__(self) -> int:
        return self.steps * self.global_batch // self.world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0x5A3F))
        order = torch.randperm(self.size, generator=generator)[: self.steps * self.global_batch]
        return iter(order[self.rank :: self.world_size].tolist())


def make_loader(
    dataset: Dataset[ItemT],
    sampler: EpochShuffleSampler,
    *,
    num_workers: int = 0,
    collate_fn: Callable[[list[ItemT]], object] | None = None,
    pin_memory: bool = False,
    worker_seed: int = 0,
) -> DataLoader:
    """The DataLoader of one epoch: per-rank batches of ``global_batch / world_size`` items."""
    num_workers = loader_workers(num_workers, sampler.steps, len(sampler))
    return DataLoader(
        dataset,
        batch_size=sampler.global_batch // sampler.world_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=True,
        generator=torch.Generator().manual_seed(worker_seed),
        multiprocessing_context=spawn_context() if num_workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=ignore_interrupts if num_workers > 0 else None,
    )


def make_batch_loader(
    dataset: Dataset[ItemT],
    batch_sampler: EpochBatchSampler,
    *,
    num_workers: int = 0,
    collate_fn: Callable[[list[ItemT]], object] | None = None,
    pin_memory: bool = False,
    worker_seed: int = 0,
) -> DataLoader:
    """The DataLoader of one epoch over the batches of ``batch_sampler`` (call its ``set_epoch`` first)."""
    num_workers = loader_workers(num_workers, len(batch_sampler), dataset_length(dataset))
    kwargs: WorkerOptions = {}
    if num_workers > 0:
        kwargs.update({"multiprocessing_context": spawn_context(), "persistent_workers": False, "prefetch_factor": 4,
                       "worker_init_fn": ignore_interrupts})
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(worker_seed),
        **kwargs,
    )
