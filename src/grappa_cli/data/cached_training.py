"""Training inputs read from the image cache: datasets, batch order and on-device views.

When ``grappa cache build`` has filled ``cache/train`` from the current training set
(:func:`grappa_cli.data.training_cache_state.require_training_cache`), the training stages read uint8
squares from it instead of decoding JPEGs, and augment whole batches on the training device
(the GPU when there is one) with :class:`~grappa_cli.data.gpu_augment.TensorAugment`:

* the DataLoader reads cache rows in the chunk-aware order of
  :class:`~grappa_cli.data.chunk_sampler.ChunkShuffleBatchSampler` (:func:`chunk_batches`),
  and hands over ``[B, 3, S, S]`` uint8 batches (with training rows, or pairs);
* the training loop moves each batch to the device and calls one of the batch preparers
  here (:class:`LabelledViews`, :class:`TwoViews`, :class:`PairViews`) with a CPU generator
  seeded from ``(seed, epoch, rank)``: the views depend on nothing else, on any device.

:class:`CenterView` is the evaluation transform on a cached square (the central crop the
eval transform takes, resized to the input size when the cache has another size): Grappa-N
embeds the training set with it for its k-NN graph.

Everything is addressed by *training rows* (rows of ``features/train``), whatever order the
cache stores images in, so pseudo-labels and k-NN graphs index cached images directly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from grappa_cli.console import Reporter
from grappa_cli.data.cache import CacheLayout, default_size, read_layout
from grappa_cli.data.cache_dataset import CachedImageDataset, CachedPairDataset, collate_cached
from grappa_cli.data.chunk_sampler import ChunkShuffleBatchSampler
from grappa_cli.data.gpu_augment import TensorAugment, normalize
from grappa_cli.data.timm_config import data_config_keys
from grappa_cli.errors import StoreError

if TYPE_CHECKING:  # annotations only
    from grappa_cli.storage.store import Store

__all__ = [
    "CenterView",
    "LabelledViews",
    "PairViews",
    "TrainingCache",
    "TwoViews",
    "chunk_batches",
    "find_training_cache",
    "loop_inputs",
]

#: Printed once per command (per reporter) when training decodes image files.
BUILD_HINT = "Training decodes every image each epoch; `grappa cache build` decodes them once and speeds training up."


@dataclass(frozen=True)
class TrainingCache:
    """A complete, current image cache of the training set, as training reads it."""

    store_path: Path
    key: str
    layout: CacheLayout

    @property
    def size(self) -> int:
        """Side S of the stored squares."""
        return self.layout.size

    def usable_rows(self, *masks: np.ndarray) -> np.ndarray:
        """Training rows whose cached image decoded and that every ``mask`` (by training row) keeps."""
        keep = np.zeros(self.layout.n, bool)
        keep[self.layout.rows[self.layout.valid]] = True
        for mask in masks:
            mask = np.asarray(mask, bool)
            if mask.shape != keep.shape:
                raise StoreError(f"{self.key} holds {self.layout.n} training rows but a mask has {mask.shape[0]}",
                                 hint="run `grappa cache build --force`")
            keep &= mask
        return np.flatnonzero(keep)

    def images(self, rows: np.ndarray, *, return_index: bool = False) -> CachedImageDataset:
        """The cached images of training rows ``rows`` (with their rows when ``return_index``)."""
        return CachedImageDataset(self.store_path, self.key, rows, return_index=return_index)

    def pairs(self, rows: np.ndarray, partners: np.ndarray, *, seed: int) -> CachedPairDataset:
        """Anchors ``rows``, each with one of its ``partners`` (training rows, -1 pads) per epoch."""
        return CachedPairDataset(self.store_path, self.key, rows, partners, seed=seed)


_HINTED: weakref.WeakSet[Reporter] = weakref.WeakSet()


def _first_time(reporter: Reporter) -> bool:
    """True the first time a reporter (one command's progress view) asks; a pipeline run
    trains several models through one reporter and should say the hint once."""
    try:
        if reporter in _HINTED:
            return False
        _HINTED.add(reporter)
    except TypeError:  # not weakly referenceable: say it every time
        pass
    return True


def find_training_cache(store: Store, reporter: Reporter | None = None) -> TrainingCache | None:
    """The training cache when it is complete and current, else None after a one-line hint.

    The hint says how to build (or rebuild) the cache; training then decodes the image files
    as before. A cache that exists but is partial or stale is never read.
    """
    from grappa_cli.data.training_cache_state import require_training_cache

    try:
        key = require_training_cache(store)
    except StoreError as exc:
        if reporter is not None:
            if store.exists("cache/train"):
                reporter.log(f"Not reading the image cache: {exc}")
            elif _first_time(reporter):
                reporter.log(BUILD_HINT)
        return None
    return TrainingCache(Path(store.path), key, read_layout(store.path, key))


def chunk_batches(window: int = 8) -> Callable[..., ChunkShuffleBatchSampler]:
    """A batch-sampler factory for the training loop: chunk-aware order, full batches only."""

    def factory(dataset: CachedImageDataset, *, batch_size: int, seed: int, rank: int,
                world_size: int) -> ChunkShuffleBatchSampler:
        return dataset.batch_sampler(batch_size, window=window, seed=seed, drop_last=True, rank=rank,
                                     world_size=world_size)

    return factory


def loop_inputs(prepare_batch: LabelledViews | TwoViews | PairViews | PlainPairViews, window: int = 8,
                ) -> dict[str, Any]:
    """Keyword arguments of :func:`grappa_cli.train.loop.train` for a cached dataset."""
    return {"prepare_batch": prepare_batch, "make_batch_sampler": chunk_batches(window),
            "collate_fn": collate_cached}


# -- batch preparers (called by the training loop on the device) ----------------------------------
class LabelledViews:
    """``(uint8 images, training rows) -> (augmented images, pseudo-labels of those rows)``.

    ``labels`` is indexed by training row (e.g. ``clusters/k<K>/labels``), so the label of a
    cached image is looked up by the row the cache says it holds.
    """

    def __init__(self, augment: TensorAugment, labels: np.ndarray) -> None:
        self.augment = augment
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self._on: dict[torch.device, torch.Tensor] = {}

    def labels_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self.labels.to(device)
        return self._on[device]

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images, rows = batch
        return self.augment(images, generator), self.labels_on(rows.device)[rows]


class TwoViews:
    """``uint8 images -> (first(images), second(images))``: two augmentations of each image (Grappa-T)."""

    def __init__(self, first: TensorAugment, second: TensorAugment) -> None:
        self.first = first
        self.second = second

    def __call__(self, batch: torch.Tensor, device: torch.device,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(batch, generator), self.second(batch, generator)


class PairViews:
    """``(uint8 anchors, uint8 partners) -> (augment(anchors), augment(partners))`` (Grappa-N)."""

    def __init__(self, augment: TensorAugment) -> None:
        self.augment = augment

    def __call__(self, batch: Sequence[torch.Tensor], device: torch.device,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        anchors, partners = batch[0], batch[1]
        return self.augment(anchors, generator), self.augment(partners, generator)


class PlainPairViews:
    """``(uint8 anchors, uint8 partners) -> (view(anchors), view(partners))``: k-NN pairs without augmentation."""

    def __init__(self, view: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.view = view

    def __call__(self, batch: Sequence[torch.Tensor], device: torch.device,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(batch[0]), self.view(batch[1])


@dataclass(frozen=True)
class CenterView:
    """The evaluation transform on cached squares: central crop, resize to the input size, normalise.

    The eval transform resizes an image's shorter side to ``input_size / crop_pct`` and takes
    the central ``input_size`` square; a cache of that size (the default) holds exactly the
    resized central square, so the view is a plain central crop of ``input_size`` pixels. A
    cache of another size ``S`` is cropped to ``S * crop_pct`` and resized (antialiased) to
    the input size.
    """

    out_size: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    @classmethod
    def for_cache(cls, data_config: Mapping[str, object], cache_size: int) -> CenterView:
        cfg = data_config_keys(data_config)
        size = cfg["input_size"]
        out = int(size[-1] if isinstance(size, list | tuple) else size)
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        crop = out if cache_size == default_size(data_config) else round(cache_size * crop_pct)
        interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        return cls(out, min(max(crop, 1), cache_size),
                   tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),
                   tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))), interpolation)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, S, S]`` -> normalised float32 ``[B, 3, out, out]`` on the same device."""
        side = images.shape[-1]
        top = (images.shape[-2] - self.crop) // 2
        left = (side - self.crop) // 2
        x = images[..., top : top + self.crop, left : left + self.crop]
        if self.crop != self.out_size:
            x = F.interpolate(x.float(), size=(self.out_size, self.out_size), mode=self.interpolation,
                              antialias=True, align_corners=False).clamp_(0.0, 255.0)
            x = x.div_(255.0)
        return normalize(x, self.mean, self.std)
