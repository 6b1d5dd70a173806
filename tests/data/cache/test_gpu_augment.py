"""Batched tensor augmentations against torchvision's reference definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from grappa_cli.data import gpu_augment as ga

DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), "crop_pct": 0.875}


def smooth_batch(n: int = 6, size: int = 40, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, size, size] images with structure at several scales (not just noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 5, 5, generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.08 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_boxes_follow_torchvision_rules_and_scale_range() -> None:
    n, h, w = 4000, 48, 64
    boxes = ga.sample_crop_boxes(n, h, w, (0.08, 1.0), (3 / 4, 4 / 3), gen(1))
    top, left, bh, bw = boxes.unbind(1)
    assert boxes.dtype == torch.long and boxes.shape == (n, 4)
    assert (bh >= 1).all() and (bw >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    area = (bh * bw).double() / (h * w)
    # rounding the sides to integers moves the area by at most ~2 sides of a pixel
    assert area.min() >= 0.08 - 2 * (math.sqrt(0.08 * h * w * 4 / 3) + 1) / (h * w)
    assert area.max() <= 1.0
    # accepted boxes are uniform in area over the part of the range that fits: both ends are populated
    assert (area < 0.3).float().mean() > 0.2 and (area > 0.6).float().mean() > 0.1
    aspect = bw.double() / bh.double()
    assert aspect.min() > 0.7 and aspect.max() < 1.45
    # fixed scale: every area within rounding of the requested one
    half = ga.sample_crop_boxes(500, 64, 64, (0.5, 0.5), (1.0, 1.0), gen(2))
    frac = (half[:, 2] * half[:, 3]).double() / (64 * 64)
    assert ((frac - 0.5).abs() < 0.03).all()
    assert (half[:, 2] == half[:, 3]).all()


def test_crop_boxes_fall_back_to_the_central_crop() -> None:
    # a ratio range the 10 x 3 image can never satisfy with area >= 0.9: torchvision's fallback
    boxes = ga.sample_crop_boxes(5, 3, 10, (0.9, 1.0), (1.0, 1.0), gen(0))
    assert boxes.tolist() == [[0, 3, 3, 3]] * 5


@pytest.mark.parametrize("method", ["grid", "interpolate"])
def test_full_square_crop_is_a_plain_resize(method: str) -> None:
    images = smooth_batch(4, 40)
    aug = ga.TensorAugment(out_size=32, mean=(0, 0, 0), std=(1, 1, 1), scale=(1, 1), ratio=(1, 1), hflip=0.0,
                           method=method)
    out = aug(images, gen(0))
    reference = F.interpolate(images.float() / 255, size=(32, 32), mode="bilinear", align_corners=False,
                              antialias=False)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    if method == "grid":
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    else:  # the antialiased uint8 kernel: exact against torchvision, close to the plain resize
        tv = TF.resize(images, [32, 32], antialias=True).float() / 255
        torch.testing.assert_close(out, tv, atol=1e-6, rtol=0)
        assert (out - reference).abs().mean() < 0.02


def test_grid_crop_matches_interpolating_the_cropped_region() -> None:
    images = smooth_batch(3, 40)
    boxes = torch.tensor([[2, 5, 20, 30], [0, 0, 40, 40], [10, 3, 17, 9]])
    out = ga.crop_resize(images, boxes, 24, method="grid")
    for i, (t, left, h, w) in enumerate(boxes.tolist()):
        crop = images[i : i + 1, :, t : t + h, left : left + w].float() / 255
        ref = F.interpolate(crop, size=(24, 24), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=0)
    cpu = ga.crop_resize(images, boxes, 24, method="interpolate")
    for i, (t, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(images[i], t, left, h, w, [24, 24], antialias=True).float() / 255
        torch.testing.assert_close(cpu[i], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["grid", "interpolate"])
def test_flip_really_flips(method: str) -> None:
    images = smooth_batch(4, 40)
    boxes = torch.tensor([[3, 4, 30, 33]] * 4)
    flip = torch.tensor([True, False, True, False])
    plain = ga.crop_resize(images, boxes, 24, method=method)
    flipped = ga.crop_resize(images, boxes, 24, flip=flip, method=method)
    torch.testing.assert_close(flipped[0], plain[0].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped[1], plain[1])
    assert not torch.allclose(flipped[0], plain[0])
    torch.testing.assert_close(ga.hflip(plain, flip)[2], plain[2].flip(-1))


def test_normalize_uint8_equals_float_definition() -> None:
    images = smooth_batch(2, 8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ref = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(ga.normalize(images, mean, std), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ga.normalize(images.float() / 255, mean, std), ref, atol=1e-5, rtol=1e-5)


def test_colour_ops_match_torchvision_per_sample() -> None:
    x = smooth_batch(4, 16).float() / 255
    f = torch.tensor([0.6, 1.0, 1.3, 0.0])
    hue = torch.tensor([-0.4, 0.1, 0.0, 0.25])
    for i in range(4):
        torch.testing.assert_close(ga.adjust_brightness(x, f)[i], TF.adjust_brightness(x[i], float(f[i])))
        torch.testing.assert_close(ga.adjust_contrast(x, f)[i], TF.adjust_contrast(x[i], float(f[i])))
        torch.testing.assert_close(ga.adjust_saturation(x, f)[i], TF.adjust_saturation(x[i], float(f[i])))
        torch.testing.assert_close(ga.adjust_hue(x, hue)[i], TF.adjust_hue(x[i], float(hue[i])),
                                   atol=1e-5, rtol=1e-5)


def test_color_jitter_applies_ops_in_each_samples_own_order() -> None:
    x = smooth_batch(16, 12).float() / 255
    params = ga.sample_color_jitter(16, 0.4, 0.4, 0.2, 0.1, p=0.8, generator=gen(3))
    assert len({tuple(o) for o in params.order.tolist()}) > 1  # orders differ across the batch
    assert params.apply.any() and not params.apply.all()
    out = ga.color_jitter(x, params)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(16):
        ref = x[i]
        if params.apply[i]:
            for op in params.order[i].tolist():
                ref = ops[op](ref, float(params.factors[i, op]))
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)
    lo, hi = params.factors.min(0).values, params.factors.max(0).values
    assert lo[0] >= 0.6 and hi[0] <= 1.4 and lo[2] >= 0.8 and hi[2] <= 1.2 and lo[3] >= -0.1 and hi[3] <= 0.1


def test_grayscale_gives_equal_channels() -> None:
    x = smooth_batch(8, 12).float() / 255
    out = ga.random_grayscale(x, 1.0, gen(0))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    torch.testing.assert_close(out[:, :1], TF.rgb_to_grayscale(x))
    assert torch.equal(ga.random_grayscale(x, 0.0, gen(0)), x)


def test_solarize_inverts_at_and_above_the_threshold() -> None:
    x = torch.tensor([0.0, 0.2, 127 / 255, 128 / 255, 0.9, 1.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    expected = torch.tensor([0.0, 0.2, 127 / 255, 1 - 128 / 255, 0.1, 0.0])
    torch.testing.assert_close(ga.solarize(x)[0, 0, 0], expected)
    u8 = smooth_batch(1, 16)[0]
    torch.testing.assert_close(ga.solarize(u8.float() / 255), TF.solarize(u8, 128).float() / 255)


def test_blur_matches_torchvision_and_keeps_constant_images() -> None:
    x = smooth_batch(3, 20).float() / 255
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = ga.gaussian_blur(x, sigma, 13)
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [13, 13], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)
    constant = torch.full((2, 3, 16, 16), 0.37)
    blurred = ga.random_gaussian_blur(constant, 1.0, (0.1, 2.0), gen(0))
    torch.testing.assert_close(blurred, constant)
    assert blurred.mean().item() == pytest.approx(0.37, abs=1e-6)
    assert x.std() > out[2].std()  # a wide blur smooths


def test_recipes_shapes_ranges_and_per_sample_parameters() -> None:
    images = smooth_batch(8, 40)
    for aug in (ga.TensorAugment.standard(DATA_CONFIG), ga.TensorAugment.barlow_twins(DATA_CONFIG, 1),
                ga.TensorAugment.barlow_twins(DATA_CONFIG, 2)):
        out = aug(images, gen(0))
        assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
        mean = torch.tensor(DATA_CONFIG["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(DATA_CONFIG["std"]).view(1, 3, 1, 1)
        unit = out * std + mean
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
        # every image got its own crop: no two outputs of the same input image coincide
        same = ga.TensorAugment.standard(DATA_CONFIG)(images[:1].expand(8, -1, -1, -1), gen(0))
        assert len({tuple(v.flatten()[:50].tolist()) for v in same}) == 8


def test_same_seed_same_output_and_different_seed_differs() -> None:
    images = smooth_batch(6, 40)
    for aug in (ga.TensorAugment.standard(DATA_CONFIG), ga.TensorAugment.barlow_twins(DATA_CONFIG, 2)):
        a, b, c = aug(images, gen(7)), aug(images, gen(7)), aug(images, gen(8))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)


def test_cpu_and_grid_paths_draw_identical_parameters() -> None:
    images = smooth_batch(6, 40)
    grid = ga.TensorAugment.standard(DATA_CONFIG, method="grid")(images, gen(5))
    cpu = ga.TensorAugment.standard(DATA_CONFIG, method="interpolate")(images, gen(5))
    # same boxes and flips; only the resampling filter and uint8 rounding differ
    assert (grid - cpu).abs().mean() < 0.05 * max(1 / s for s in DATA_CONFIG["std"])


def test_barlow_twins_views_differ_as_specified() -> None:
    v1 = ga.TensorAugment.barlow_twins(DATA_CONFIG, 1)
    v2 = ga.TensorAugment.barlow_twins(DATA_CONFIG, 2)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert v1.jitter == (0.4, 0.4, 0.2, 0.1) and v1.jitter_p == 0.8 and v1.grayscale_p == 0.2
    with pytest.raises(ValueError):
        ga.TensorAugment.barlow_twins(DATA_CONFIG, 3)
