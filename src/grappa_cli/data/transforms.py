"""Image transforms, all derived from the backbone's timm data config.

* :func:`eval_transform`: timm's evaluation transform (resize, centre crop, normalise) —
  what feature extraction and evaluation use.
* :func:`train_transform`: timm's standard training transform, random resized crop and
  horizontal flip only (no colour jitter, no auto-augment) — adaptor training.
* :class:`BarlowTwinsTransform`: the two asymmetric views of Barlow Twins (Zbontar et al.
  2021, appendix "Image augmentations"), used by Grappa-T's transformation-consistency loss.

Input size, interpolation, mean and std come from the data config (``Backbone.data_config``),
never from constants written here. Every transform first converts images to RGB so
greyscale, palette and RGBA files work.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from grappa_cli.data.timm_config import data_config_keys

#: Barlow Twins' blur sigma range, in pixels at 224 px; scaled with the input size.
BLUR_SIGMA_224 = (0.1, 2.0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert to 3-channel RGB (a module-level function so DataLoader workers can pickle it)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def _size(data_config: Mapping[str, object]) -> tuple[int, int]:
    _, height, width = data_config_keys(data_config)["input_size"]
    return int(height), int(width)


def _interpolation(data_config: Mapping[str, object]) -> T.InterpolationMode:
    from timm.data.transforms import str_to_interp_mode

    return str_to_interp_mode(data_config_keys(data_config).get("interpolation", "bicubic"))


def _normalize(data_config: Mapping[str, object]) -> T.Normalize:
    cfg = data_config_keys(data_config)
    return T.Normalize(mean=list(cfg["mean"]), std=list(cfg["std"]))


def eval_transform(data_config: Mapping[str, object]) -> T.Compose:
    """timm's evaluation transform for the data config, after an RGB conversion."""
    from timm.data import create_transform

    cfg = data_config_keys(data_config)
    timm_transform = create_transform(
        input_size=cfg["input_size"],
        is_training=False,
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg.get("crop_pct"),
        crop_mode=cfg.get("crop_mode"),
    )
    return T.Compose([T.Lambda(to_rgb), timm_transform])


def train_transform(data_config: Mapping[str, object], crop_scale: float = 0.08) -> T.Compose:
    """timm's training transform reduced to random resized crop + horizontal flip.

    ``crop_scale``: the smallest area fraction the random crop keeps (timm's default 0.08).
    """
    from timm.data import create_transform

    cfg = data_config_keys(data_config)
    timm_transform = create_transform(
        input_size=cfg["input_size"],
        is_training=True,
        scale=(float(crop_scale), 1.0),
        color_jitter=None,  # type: ignore[arg-type]  # timm's hint omits None, which its code reads as "no jitter"
        auto_augment=None,
        hflip=0.5,
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=cfg["mean"],
        std=cfg["std"],
    )
    return T.Compose([T.Lambda(to_rgb), timm_transform])


class RandomGaussianBlur:
    """PIL Gaussian blur with probability ``p`` and a sigma drawn uniformly from ``sigma`` (pixels)."""

    def __init__(self, p: float, sigma: tuple[float, float]) -> None:
        self.p = p
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return image
        low, high = self.sigma
        radius = low + (high - low) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sigma={self.sigma})"


def barlow_twins_view(data_config: Mapping[str, object], *, blur_p: float, solarize_p: float) -> T.Compose:
    """One Barlow Twins view: crop, flip, colour jitter (p 0.8), greyscale (p 0.2), blur, solarise."""
    height, width = _size(data_config)
    scale = min(height, width) / 224
    sigma = (BLUR_SIGMA_224[0] * scale, BLUR_SIGMA_224[1] * scale)
    return T.Compose(
        [
            T.Lambda(to_rgb),
            T.RandomResizedCrop((height, width), interpolation=_interpolation(data_config)),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            RandomGaussianBlur(p=blur_p, sigma=sigma),
            T.RandomSolarize(threshold=128, p=solarize_p),
            T.ToTensor(),
            _normalize(data_config),
        ]
    )


class BarlowTwinsTransform:
    """Two asymmetric augmented views of an image, as in Barlow Twins.

    View 1 always blurs and never solarises; view 2 blurs with probability 0.1 and
    solarises with probability 0.2. Call it on one image for a pair of views, or use
    :attr:`first` and :attr:`second` separately on the two images of a neighbour pair.
    """

    def __init__(self, data_config: Mapping[str, object]) -> None:
        self.first = barlow_twins_view(data_config, blur_p=1.0, solarize_p=0.0)
        self.second = barlow_twins_view(data_config, blur_p=0.1, solarize_p=0.2)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(image), self.second(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(first={self.first!r}, second={self.second!r})"
