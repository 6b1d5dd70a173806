"""Transforms built from the backbone's timm data config."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from grappa_cli.data.transforms import BarlowTwinsTransform, eval_transform, train_transform

CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.2, 0.4, 0.6),
    "std": (0.5, 0.25, 0.125),
    "crop_pct": 0.9,
    "crop_mode": "center",
}


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 60, 3), dtype=np.uint8))


def test_eval_transform_resizes_crops_and_normalises_with_the_config(photo):
    out = eval_transform(CONFIG)(photo)
    assert out.shape == (3, 32, 32)
    flat = Image.new("RGB", (40, 40), (51, 102, 153))  # 0.2, 0.4, 0.6 -> normalised to 0
    torch.testing.assert_close(eval_transform(CONFIG)(flat), torch.zeros(3, 32, 32), atol=1e-2, rtol=0)
    white = eval_transform(CONFIG)(Image.new("RGB", (40, 40), (255, 255, 255)))
    expected = (1 - torch.tensor(CONFIG["mean"])) / torch.tensor(CONFIG["std"])
    torch.testing.assert_close(white[:, 16, 16], expected, atol=1e-5, rtol=0)


def test_eval_transform_is_deterministic_and_accepts_greyscale(photo):
    transform = eval_transform(CONFIG)
    assert torch.equal(transform(photo), transform(photo))
    assert transform(photo.convert("L")).shape == (3, 32, 32)
    assert transform(photo.convert("RGBA")).shape == (3, 32, 32)


def test_train_transform_is_crop_and_flip_only(photo):
    transform = train_transform(CONFIG)
    text = repr(transform)
    assert "RandomResizedCrop" in text and "RandomHorizontalFlip" in text
    assert "ColorJitter" not in text
    torch.manual_seed(0)
    a, b = transform(photo), transform(photo)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)


def test_barlow_twins_views_are_asymmetric_and_sized_from_the_config(photo):
    transform = BarlowTwinsTransform(CONFIG)
    first, second = repr(transform.first), repr(transform.second)
    assert "RandomGaussianBlur(p=1.0" in first and "RandomGaussianBlur(p=0.1" in second
    solarize = [view.transforms[6] for view in (transform.first, transform.second)]
    assert [s.threshold for s in solarize] == [128, 128] and [s.p for s in solarize] == [0.0, 0.2]
    for text in (first, second):
        assert (
            "ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.8, 1.2), hue=(-0.1, 0.1))"
            in text
        )
        assert "RandomGrayscale(p=0.2)" in text and "size=(32, 32)" in text
    # blur sigma scales with the input size: Barlow Twins' 0.1-2.0 px at 224 px
    assert transform.first.transforms[5].sigma == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224))
    torch.manual_seed(0)
    v1, v2 = transform(photo)
    assert v1.shape == v2.shape == (3, 32, 32)
    assert not torch.equal(v1, v2)


def test_transforms_pickle_for_spawned_workers(photo):
    for transform in (eval_transform(CONFIG), train_transform(CONFIG), BarlowTwinsTransform(CONFIG)):
        clone = pickle.loads(pickle.dumps(transform))
        assert repr(clone) == repr(transform)
    assert torch.equal(
        pickle.loads(pickle.dumps(eval_transform(CONFIG)))(photo), eval_transform(CONFIG)(photo)
    )


def test_transforms_follow_a_backbone_data_config(tiny_backbone, photo):
    assert eval_transform(tiny_backbone.data_config)(photo).shape == (3, 32, 32)
