"""Training augmentations on whole batches of tensors, on whatever device the batch is on.

Decoding JPEGs and augmenting them one by one with PIL is what limits training speed on a
GPU. With the image cache (:mod:`grappa_cli.data.cache`) the DataLoader only hands over
uint8 batches ``[B, 3, S, S]``; this module turns them into normalised training views with a
few batched tensor operations, on the GPU when the batch is there.

Recipes (:class:`TensorAugment`):

* ``standard`` — timm's training transform as the paper's adaptor training and Grappa-N use
  it: random resized crop (scale (0.08, 1), ratio (3/4, 4/3)), horizontal flip with p = 0.5,
  normalisation with the backbone's mean/std. timm's default colour jitter is left out.
* ``barlow_twins(view=1|2)`` — the two asymmetric views of Barlow Twins for Grappa-T: crop,
  flip, colour jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8 in a random order per image,
  grayscale p = 0.2, gaussian blur (p = 1.0 / 0.1, sigma in [0.1, 2]), solarisation
  (p = 0.0 / 0.2), normalisation.

Every random parameter is drawn from one ``torch.Generator`` (on the CPU unless the generator
lives elsewhere) in a fixed order and then moved to the batch's device, so a seed gives the
same parameters on every device.

Crop-and-resize has two implementations, picked by ``method="auto"``:

* ``"grid"`` (CUDA, float inputs): one ``grid_sample`` call for the whole batch with a
  per-image sampling grid (box and flip folded in), bilinear or bicubic, no antialiasing.
  Caches store images at ``input_size / crop_pct`` (248 for a 224 model), so a crop is
  shrunk by at most ~1.1x and aliasing is negligible.
* ``"interpolate"`` (CPU, uint8 inputs): each crop is resized by the antialiased uint8 kernel
  of ``F.interpolate`` (the one ``torchvision.transforms.v2`` uses), several times faster on
  the CPU than ``grid_sample`` on floats. Results differ from ``"grid"`` by the antialias
  filter and uint8 rounding (a few grey levels).

Departures from the reference pipelines (documented in docs/architecture.md): crops come
from the cached central square rather than the full image; crops use bilinear (standard)
and bicubic (Barlow Twins) resampling instead of timm's random choice; the blur is a
separable gaussian with a kernel of ``2 * ceil(3 * sigma_max) + 1`` taps and reflect
padding (torchvision's ``gaussian_blur``) instead of PIL's box-blur approximation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from grappa_cli.data.timm_config import data_config_keys

__all__ = [
    "ColorJitterParams",
    "TensorAugment",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "color_jitter",
    "crop_resize",
    "gaussian_blur",
    "grayscale",
    "hflip",
    "normalize",
    "random_gaussian_blur",
    "random_grayscale",
    "random_resized_crop",
    "random_solarize",
    "sample_color_jitter",
    "sample_crop_boxes",
    "sample_flips",
    "solarize",
]

#: ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale``.
LUMA = (0.2989, 0.587, 0.114)
#: PIL's ``ImageOps.solarize`` default (128 of 255) on [0, 1] images.
SOLARIZE_THRESHOLD = 128 / 255


# -- random parameters -------------------------------------------------------------------------
def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + _rand((n,), generator) * (high - low)


def sample_crop_boxes(
    n: int, height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None, attempts: int = 10,
) -> torch.Tensor:
    """Boxes ``[n, 4]`` (top, left, height, width) of ``RandomResizedCrop.get_params``, vectorised.

    Per image: up to ``attempts`` draws of an area fraction in ``scale`` and a log-uniform
    aspect ratio in ``ratio``; the first box that fits wins, else the central crop clamped to
    ``ratio`` (torchvision's fallback). Every image consumes the same number of random numbers,
    so the boxes depend only on the generator's state.
    """
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + _rand((n, attempts), generator) * (scale[1] - scale[0]))
    aspect = torch.exp(log_lo + _rand((n, attempts), generator) * (log_hi - log_lo))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    found = ok.any(dim=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u_top, u_left = _rand((n,), generator), _rand((n,), generator)
    top = torch.where(found, torch.floor(u_top * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    left = torch.where(found, torch.floor(u_left * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).to(torch.long).cpu()


def sample_flips(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool ``[n]``: which images to mirror."""
    return (_rand((n,), generator) < p).cpu()


# -- geometry ----------------------------------------------------------------------------------
def _as_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def _crop_resize_grid(
    images: torch.Tensor, boxes: torch.Tensor, out_size: int, flip: torch.Tensor | None, interpolation: str,
) -> torch.Tensor:
    x = _as_unit_float(images)
    n, _, height, width = x.shape
    b = boxes.to(device=x.device, dtype=torch.float32)
    top, left, h, w = b.unbind(1)
    centers = (torch.arange(out_size, device=x.device, dtype=torch.float32) + 0.5) / out_size
    # pixel-edge coordinates of the output pixels' centres, clamped to the crop's outer pixel
    # centres so that no pixel outside the box leaks in (crop first, then resize)
    xs = torch.minimum(torch.maximum(left[:, None] + centers[None, :] * w[:, None], left[:, None] + 0.5),
                       (left + w)[:, None] - 0.5)
    ys = torch.minimum(torch.maximum(top[:, None] + centers[None, :] * h[:, None], top[:, None] + 0.5),
                       (top + h)[:, None] - 0.5)
    if flip is not None:
        mirrored = flip.to(x.device)[:, None]
        xs = torch.where(mirrored, xs.flip(1), xs)
    gx = xs / width * 2 - 1
    gy = ys / height * 2 - 1
    grid = torch.stack(
        (gx[:, None, :].expand(n, out_size, out_size), gy[:, :, None].expand(n, out_size, out_size)), dim=-1,
    )
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" else out


def _crop_resize_interpolate(
    images: torch.Tensor, boxes: torch.Tensor, out_size: int, flip: torch.Tensor | None, interpolation: str,
) -> torch.Tensor:
    # the fast uint8 kernel works on channels_last (HWC) memory: keep input and output in it
    images = images.contiguous(memory_format=torch.channels_last)
    n, channels = images.shape[:2]
    out = torch.empty((n, channels, out_size, out_size), dtype=images.dtype, device=images.device,
                      memory_format=torch.channels_last)
    mirrored = [False] * n if flip is None else flip.tolist()
    with _single_threaded():
        for i, (top, left, h, w) in enumerate(boxes.tolist()):
            crop = images[i : i + 1, :, top : top + h, left : left + w]
            resized = F.interpolate(crop, size=(out_size, out_size), mode=interpolation, antialias=True,
                                    align_corners=False)
            out[i : i + 1] = resized.flip(-1) if mirrored[i] else resized
    return out


@contextmanager
def _single_threaded() -> Iterator[None]:
    """One intra-op thread while resizing crop by crop: a single crop is too small a job to split,
    and the threads' synchronisation per call costs more than it saves (badly so on busy CPUs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _resolve_method(images: torch.Tensor, method: str) -> str:
    if method == "auto":
        return "interpolate" if images.device.type == "cpu" and images.dtype == torch.uint8 else "grid"
    return method


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, out_size: int, *, flip: torch.Tensor | None = None,
    interpolation: str = "bilinear", method: str = "auto", dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Crop ``boxes`` (top, left, height, width) out of ``images`` [B, C, H, W] and resize them.

    Returns ``[B, C, out_size, out_size]``: ``dtype`` float in [0, 1] (uint8 inputs are
    scaled by 1/255), or ``torch.uint8`` in 0..255. ``flip`` (bool [B]) mirrors images after
    cropping. ``method`` is ``"grid"``, ``"interpolate"`` or ``"auto"`` (see module docstring).
    """
    if images.ndim != 4 or boxes.shape != (images.shape[0], 4):
        raise ValueError(f"need images [B, C, H, W] and boxes [B, 4], got {tuple(images.shape)} and "
                         f"{tuple(boxes.shape)}")
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be bilinear or bicubic, got {interpolation!r}")
    method = _resolve_method(images, method)
    if method == "interpolate":
        out = _crop_resize_interpolate(images, boxes.cpu(), out_size, None if flip is None else flip.cpu(),
                                       interpolation)
        if dtype == torch.uint8:
            return out if out.dtype == torch.uint8 else out.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        return _as_unit_float(out).to(dtype)
    if method != "grid":
        raise ValueError(f"method must be auto, grid or interpolate, got {method!r}")
    out = _crop_resize_grid(images, boxes, out_size, flip, interpolation)
    if dtype == torch.uint8:
        return out.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return out.to(dtype)


def random_resized_crop(
    images: torch.Tensor, out_size: int, scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None, *,
    interpolation: str = "bilinear", method: str = "auto",
) -> torch.Tensor:
    """``RandomResizedCrop`` for a whole batch: float ``[B, C, out_size, out_size]`` in [0, 1]."""
    boxes = sample_crop_boxes(images.shape[0], images.shape[-2], images.shape[-1], scale, ratio, generator)
    return crop_resize(images, boxes, out_size, interpolation=interpolation, method=method)


def hflip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose ``flip`` entry is True (per sample, one batched select)."""
    mask = flip.to(images.device).view(-1, *([1] * (images.ndim - 1)))
    return torch.where(mask, images.flip(-1), images)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel; uint8 inputs count as ``x / 255`` (one fused pass)."""
    scale = 1.0 / torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    shift = -torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * scale
    if images.dtype == torch.uint8:
        scale = scale / 255.0
    # in the input's memory layout (channels_last from the CPU crop path): a layout change would
    # cost a strided copy, and models accept either
    return images.float().mul_(scale).add_(shift)


# -- colour ------------------------------------------------------------------------------------
def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma ``[B, 1, H, W]`` of float RGB images (torchvision's weights)."""
    r, g, b = images.unbind(dim=-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_sample(factor, a)
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply by a per-sample factor (``torchvision``'s ``adjust_brightness``)."""
    return (images * _per_sample(factor, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its mean grey level."""
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its grayscale version."""
    return _blend(images, grayscale(images), factor)


def _rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = images.unbind(dim=-3)
    maxc = images.amax(dim=-3)
    minc = images.amin(dim=-3)
    same = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(same, ones, maxc)
    divisor = torch.where(same, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    h = (maxc == r) * (bc - gc)
    h = h + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    h = h + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    return torch.fmod(h / 6.0 + 1.0, 1.0), s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # f(n) = v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6 and n = 5, 3, 1 for
    # r, g, b: the sector table of torchvision's _hsv2rgb in closed form, all channels at once
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype, device=h.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(-3), 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    vs = (v * s).unsqueeze(-3)
    return (v.unsqueeze(-3) - vs * weight).clamp_(0.0, 1.0)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by a per-sample fraction of the colour circle in [-0.5, 0.5]."""
    h, s, v = _rgb_to_hsv(images)
    shift = factor.to(device=images.device, dtype=images.dtype).view(-1, 1, 1)
    return _hsv_to_rgb(torch.remainder(h + shift, 1.0), s, v)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


@dataclass
class ColorJitterParams:
    """Per-sample colour-jitter draws: which images, the four factors and the order of the ops.

    ``order[b]`` is a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue), as
    torchvision's ``ColorJitter`` draws one per call; ``enabled`` says which ops the recipe
    uses at all (a zero strength skips the op).
    """

    apply: torch.Tensor
    factors: torch.Tensor  # [B, 4]
    order: torch.Tensor  # [B, 4]
    enabled: tuple[bool, bool, bool, bool]


def sample_color_jitter(
    n: int, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
    p: float = 0.8, generator: torch.Generator | None = None,
) -> ColorJitterParams:
    """Draw :class:`ColorJitterParams` like ``RandomApply(ColorJitter(...), p)``, per image."""
    apply = _rand((n,), generator) < p
    factors = torch.stack([
        _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator),
        _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator),
        _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator),
        _uniform(n, -hue, hue, generator),
    ], dim=1)
    order = torch.argsort(_rand((n, 4), generator), dim=1)
    enabled = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    return ColorJitterParams(apply.cpu(), factors.float().cpu(), order.cpu(), enabled)


def color_jitter(images: torch.Tensor, params: ColorJitterParams) -> torch.Tensor:
    """Apply drawn colour jitter to float images in [0, 1]; each op runs once over its images."""
    out = images.clone()
    apply = params.apply.to(images.device)
    order = params.order.to(images.device)
    factors = params.factors.to(images.device)
    for position in range(4):
        for op, enabled in enumerate(params.enabled):
            if not enabled:
                continue
            chosen = torch.nonzero(apply & (order[:, position] == op)).squeeze(1)
            if chosen.numel():
                out[chosen] = _JITTER_OPS[op](out[chosen], factors[chosen, op])
    return out


def random_grayscale(images: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace a random fraction ``p`` of the images by their grey version (3 equal channels)."""
    chosen = (_rand((images.shape[0],), generator) < p).to(images.device)
    grey = grayscale(images).expand_as(images)
    return torch.where(chosen.view(-1, 1, 1, 1), grey, images)


def _gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=sigma.device) - (size - 1) / 2
    k = torch.exp(-0.5 * (x[None, :] / sigma[:, None].float()) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable gaussian blur with a per-sample ``sigma`` and reflect padding (torchvision's)."""
    n, c, h, w = images.shape
    if n == 0:
        return images
    kernels = _gaussian_kernels(sigma.to(images.device), kernel_size).to(images.dtype)  # [B, K]
    weight = kernels.repeat_interleave(c, dim=0)  # [B*C, K]
    pad = kernel_size // 2
    x = images.reshape(1, n * c, h, w)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, weight.view(n * c, 1, 1, kernel_size), groups=n * c)
    x = F.conv2d(x, weight.view(n * c, 1, kernel_size, 1), groups=n * c)
    return x.view(n, c, h, w)


def blur_kernel_size(sigma_max: float) -> int:
    """Odd kernel width covering +-3 sigma of the widest blur."""
    return 2 * math.ceil(3 * sigma_max) + 1


def random_gaussian_blur(
    images: torch.Tensor, p: float, sigma: Sequence[float] = (0.1, 2.0), generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Blur a random fraction ``p`` of the images, each with its own sigma drawn in ``sigma``."""
    n = images.shape[0]
    chosen = (_rand((n,), generator) < p).to(images.device)
    sigmas = _uniform(n, sigma[0], sigma[1], generator).to(images.device)
    idx = torch.nonzero(chosen).squeeze(1)
    if not idx.numel():
        return images
    size = min(blur_kernel_size(sigma[1]), 2 * (min(images.shape[-2:]) - 1) + 1)
    out = images.clone()
    out[idx] = gaussian_blur(images[idx], sigmas[idx], size)
    return out


def solarize(images: torch.Tensor, threshold: float = SOLARIZE_THRESHOLD) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (``ImageOps.solarize``)."""
    return torch.where(images >= threshold, 1.0 - images, images)


def random_solarize(images: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    chosen = (_rand((images.shape[0],), generator) < p).to(images.device)
    return torch.where(chosen.view(-1, 1, 1, 1), solarize(images), images)


# -- recipes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorAugment:
    """One augmentation recipe for uint8 (or [0, 1] float) batches; call it with a generator.

    ``augment(images, generator)`` returns normalised float32 ``[B, 3, out_size, out_size]``
    on the images' device. Random parameters are drawn in a fixed order: crop boxes, flips,
    colour jitter, grayscale, blur, solarisation (each only when its probability is > 0).
    """

    out_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    interpolation: str = "bilinear"
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    method: str = "auto"

    @classmethod
    def standard(cls, data_config: Mapping[str, object], **overrides: Any) -> TensorAugment:
        """Random resized crop + flip + normalisation (timm's training transform, no jitter)."""
        return cls(**{**_from_data_config(data_config), **overrides})

    @classmethod
    def barlow_twins(cls, data_config: Mapping[str, object], view: int, **overrides: Any) -> TensorAugment:
        """View 1 or 2 of Barlow Twins' asymmetric augmentation pair."""
        if view not in (1, 2):
            raise ValueError(f"Barlow Twins has views 1 and 2, got {view}")
        recipe = {
            **_from_data_config(data_config), "interpolation": "bicubic", "jitter": (0.4, 0.4, 0.2, 0.1),
            "jitter_p": 0.8, "grayscale_p": 0.2, "blur_p": 1.0 if view == 1 else 0.1,
            "solarize_p": 0.0 if view == 1 else 0.2,
        }
        return cls(**{**recipe, **overrides})

    @property
    def uses_color(self) -> bool:
        return self.jitter_p > 0 or self.grayscale_p > 0 or self.blur_p > 0 or self.solarize_p > 0

    def describe(self) -> dict[str, object]:
        """Plain parameters (for provenance records)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(n, height, width, self.scale, self.ratio, generator)
        flips = sample_flips(n, self.hflip, generator) if self.hflip > 0 else None
        if not self.uses_color and _resolve_method(images, self.method) == "interpolate":
            # the CPU path crops in uint8: normalise straight from uint8 in one pass
            x = crop_resize(images, boxes, self.out_size, flip=flips, interpolation=self.interpolation,
                            method="interpolate", dtype=images.dtype)
            return normalize(x, self.mean, self.std)
        x = crop_resize(images, boxes, self.out_size, flip=flips, interpolation=self.interpolation,
                        method=self.method)
        if self.jitter_p > 0 and any(self.jitter):
            x = color_jitter(x, sample_color_jitter(n, *self.jitter, p=self.jitter_p, generator=generator))
        if self.grayscale_p > 0:
            x = random_grayscale(x, self.grayscale_p, generator)
        if self.blur_p > 0:
            x = random_gaussian_blur(x, self.blur_p, self.blur_sigma, generator)
        if self.solarize_p > 0:
            x = random_solarize(x, self.solarize_p, generator)
        return normalize(x, self.mean, self.std)


def _from_data_config(data_config: Mapping[str, object]) -> dict[str, Any]:
    cfg = data_config_keys(data_config)
    size = cfg["input_size"]
    out = int(size[-1] if isinstance(size, list | tuple) else size)
    return {
        "out_size": out,
        "mean": tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))),
    }
