"""Robust image decoding and the image datasets every stage reads through.

One unreadable, truncated or non-image file must never kill a long run: decoding errors are
caught per image, the sample is marked bad, and the stage lists the bad files at the end.

JPEG decoding uses PIL's ``draft`` mode: the decoder skips DCT coefficients it does not need
when the transform will shrink the image anyway, which makes decoding several times faster for
large photos. The decoded image is still at least ``min_side`` pixels on its shorter side, so
the transform's resize stays a downscale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import torch
from PIL import Image

from grappa_cli.data.timm_config import data_config_keys
from grappa_cli.runtime import ignore_interrupts, spawn_context

if TYPE_CHECKING:  # annotations only
    from grappa_cli.runtime import QuietSpawnContext

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class UnsafeImage(ValueError):
    """An image whose pixel count exceeds PIL's decompression-bomb limit: refused, not decoded."""


def load_rgb(path: str, min_side: int | None = None) -> Image.Image:
    """Decode ``path`` fully into an RGB image (raises on unreadable, truncated or oversized files).

    16-bit and 32-bit grey levels are scaled to 8 bits (PIL's own conversion clips them,
    which turns a 16-bit image almost white). An image above PIL's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``) raises :class:`UnsafeImage` naming its size, so it is listed
    as unreadable with that reason instead of printing PIL's warning.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                if min_side and img.format == "JPEG":
                    img.draft("RGB", (min_side, min_side))
                img.load()  # forces full decoding: truncated files raise here, not later in a worker
                return _to_rgb(img)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise UnsafeImage(f"too many pixels to decode safely (a possible decompression bomb): {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel, high-bit-depth grey levels scaled rather than clipped."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        import numpy as np

        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if values.size and values.max() <= 1.0 else 255.0
        else:
            top = 65535.0 if img.mode.startswith("I;16") or (values.size and values.max() > 255) else 255.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")


def decode_min_side(data_config: Mapping[str, object]) -> int:
    """The shorter side the eval transform resizes to (``input_size / crop_pct``)."""
    cfg = data_config_keys(data_config)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return int(size / crop_pct) + 1


@dataclass
class Sample:
    index: int
    image: torch.Tensor | None
    error: str | None


class ImageDataset(torch.utils.data.Dataset):
    """Images addressed by position in ``paths``; a bad file yields a sample with ``error`` set.

    ``indices`` restricts the dataset to some positions (a rank's share, the chunks still to
    do) while samples keep their global index, so results land in the right rows.
    """

    def __init__(
        self, paths: Sequence[str], transform: Callable[[Image.Image], torch.Tensor],
        indices: Sequence[int] | None = None, min_side: int | None = None,
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.indices = list(range(len(self.paths))) if indices is None else list(indices)
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Sample:
        index = self.indices[position]
        path = self.paths[index]
        try:
            image = self.transform(load_rgb(path, self.min_side))
        except Exception as exc:  # any decoder/transform failure marks this one file bad
            return Sample(index, None, f"{type(exc).__name__}: {exc}"[:300])
        return Sample(index, image, None)


@dataclass
class Batch:
    """Good images stacked, their global indices, and the bad ones with their errors."""

    indices: torch.Tensor
    images: torch.Tensor
    bad: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        return Batch(self.indices.pin_memory(), self.images.pin_memory(), self.bad)


def collate_samples(samples: list[Sample]) -> Batch:
    good = [(s.index, s.image) for s in samples if s.image is not None]
    bad = [(s.index, s.error or "unknown error") for s in samples if s.image is None]
    images = torch.stack([image for _, image in good]) if good else torch.empty(0)
    indices = torch.tensor([index for index, _ in good], dtype=torch.long)
    return Batch(indices, images, bad)


class WorkerOptions(TypedDict, total=False):
    """DataLoader keyword arguments for worker processes (left out without workers)."""

    multiprocessing_context: QuietSpawnContext
    persistent_workers: bool
    prefetch_factor: int
    worker_init_fn: Callable[[int], None]


def make_loader(
    dataset: torch.utils.data.Dataset, *, batch_size: int, num_workers: int, device: torch.device,
    collate_fn: Callable[[list[Sample]], object] = collate_samples,
) -> torch.utils.data.DataLoader:
    """A DataLoader that overlaps decoding with compute.

    Workers use the ``spawn`` start method: the parent may hold zarr's event-loop thread, and
    forking a process with running threads is unsafe. Their number is capped by
    :func:`grappa_cli.runtime.loader_workers` (none for a single batch).
    """
    from grappa_cli.runtime import loader_workers

    items = len(dataset)  # type: ignore[arg-type]
    num_workers = loader_workers(num_workers, -(-items // max(1, batch_size)), items)
    kwargs: WorkerOptions = {}
    if num_workers > 0:
        kwargs.update({
            "multiprocessing_context": spawn_context(), "persistent_workers": False, "prefetch_factor": 4,
            "worker_init_fn": ignore_interrupts,
        })
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_fn, pin_memory=device.type == "cuda", **kwargs,
    )
