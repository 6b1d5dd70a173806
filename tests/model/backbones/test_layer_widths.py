"""Per-layer widths D_l: the bottleneck rule D'_l = min(D', D_l - 1), checkpoints and fusion."""

from __future__ import annotations

import pytest
import torch

from grappa_cli.errors import ConfigError, StoreError
from grappa_cli.model import (
    AdaptorSet,
    GrappaModel,
    check_bottleneck,
    layer_bottlenecks,
    load_adaptor_set,
    load_fusion,
    new_adaptor_set,
    read_metadata,
    save_adaptor_set,
    save_fusion,
)
from grappa_cli.model.adaptor import Adaptor

from .conftest import trained_like_set


def test_layer_bottlenecks_rule():
    assert layer_bottlenecks(64, (16, 24, 40, 80, 112, 192, 320)) == (15, 23, 39, 64, 64, 64, 64)
    assert layer_bottlenecks(64, (384,) * 12) == (64,) * 12
    assert layer_bottlenecks(8, (16, 24)) == (8, 8)


def test_bottleneck_only_has_to_fit_the_widest_layer(tmp_path):
    config = tmp_path / "grappa.toml"
    check_bottleneck(319, (16, 320), config)
    with pytest.raises(ConfigError) as info:
        check_bottleneck(320, (16, 320), config)
    message = str(info.value)
    assert "adapt.bottleneck" in message and str(config) in message
    assert "D - 1 = 319" in message and "D = 320 in the widest layer; got 320" in message
    with pytest.raises(ConfigError, match=r"\(D = 64; got 64\)"):  # one width: the paper's D' < D
        check_bottleneck(64, (64, 64))
    with pytest.raises(ConfigError):
        check_bottleneck(0, (16, 320))


def test_new_set_on_a_cnn_uses_per_layer_bottlenecks(cnn_backbones):
    backbone = cnn_backbones["efficientnet"]
    assert backbone.layer_dims == (16, 24, 32, 48, 64)
    adaptor_set = new_adaptor_set(backbone, 32, seed=0)
    assert adaptor_set.layer_dims == backbone.layer_dims
    assert adaptor_set.bottlenecks == (15, 23, 31, 32, 32)
    assert adaptor_set.bottleneck == 32
    for adaptor, dim in zip(adaptor_set.layers, backbone.layer_dims, strict=True):
        assert adaptor.down.in_features == dim and adaptor.up.out_features == dim
        assert not adaptor.up.weight.any() and not adaptor.up.bias.any()


def test_adaptor_checkpoint_round_trip_with_per_layer_widths(cnn_backbones, cnn_images, tmp_path):
    backbone = cnn_backbones["efficientnet"]
    sets = [trained_like_set(backbone, 32, seed=s) for s in range(2)]
    paths = []
    for i, adaptor_set in enumerate(sets):
        path = tmp_path / f"k{i}.safetensors"
        save_adaptor_set(path, adaptor_set, backbone=backbone, k=4 + i)
        paths.append(path)
    meta = read_metadata(paths[0])
    assert meta["bottleneck"] == "32" and meta["layer_dims"] == [16, 24, 32, 48, 64]
    loaded = load_adaptor_set(paths[1], backbone)
    assert loaded.bottlenecks == (15, 23, 31, 32, 32) and loaded.k == 5
    for a, b in zip(loaded.state_dict().values(), sets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)

    model = GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention")
    fusion_path = tmp_path / "fusion.safetensors"
    save_fusion(fusion_path, model.fusion_layers(), backbone=backbone, adaptor_sets=["k4", "k5"])
    fusion = load_fusion(fusion_path, backbone, num_sets=2)
    assert [layer.dim for layer in fusion.layers] == list(backbone.layer_dims)
    again = GrappaModel.from_checkpoints(backbone, paths, fusion=fusion_path)
    with torch.no_grad():
        assert torch.equal(again(cnn_images), model(cnn_images))


def test_checkpoint_of_another_cnn_is_refused(cnn_backbones, tmp_path):
    path = tmp_path / "k4.safetensors"
    save_adaptor_set(path, new_adaptor_set(cnn_backbones["efficientnet"], 8), backbone=cnn_backbones["efficientnet"])
    with pytest.raises(StoreError, match="made for another backbone"):
        load_adaptor_set(path, cnn_backbones["resnet"])


def test_saving_a_set_that_breaks_the_rule_is_refused(cnn_backbones, tmp_path):
    backbone = cnn_backbones["efficientnet"]
    odd = AdaptorSet([Adaptor(d, 8 if i else 4) for i, d in enumerate(backbone.layer_dims)])
    with pytest.raises(ValueError, match="do not follow"):
        save_adaptor_set(tmp_path / "odd.safetensors", odd, backbone=backbone)
    assert not (tmp_path / "odd.safetensors").exists()


def test_sets_of_different_bottlenecks_cannot_be_fused(cnn_backbones):
    backbone = cnn_backbones["resnet"]
    with pytest.raises(ValueError, match="must share D and D'"):
        GrappaModel.with_adaptor_sets(
            backbone, [new_adaptor_set(backbone, 8), new_adaptor_set(backbone, 16)], fusion="mean"
        )
