"""``[fuse] strength``: the share of the fused adaptation a model applies (WiSE-style interpolation)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from grappa_cli.errors import GrappaError
from grappa_cli.model import GrappaModel, load_fusion, save_adaptor_set, save_fusion
from grappa_cli.model.bundle import load_layers, read_bundle_metadata, save_bundle

from .conftest import trained_like_set


def _sets(backbone, n=3):
    return [trained_like_set(backbone, seed=i) for i in range(n)]


@pytest.mark.parametrize("fusion", ["mean", "attention"])
def test_strength_zero_is_the_backbone_and_one_is_unchanged(tiny_backbone, images, fusion):
    sets = _sets(tiny_backbone)
    full = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion=fusion, attention_init="linear")
    z_full = full(images)
    off = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion=fusion, attention_init="linear", strength=0.0)
    assert torch.equal(off(images), tiny_backbone(images))
    assert torch.equal(full.set_strength(1.0)(images), z_full)  # 1 is the model as it was
    assert not torch.allclose(z_full, tiny_backbone(images), atol=1e-3)  # the adaptation does something


def test_mean_fusion_at_strength_s_is_the_model_with_up_projections_times_s(tiny_backbone, images):
    """Grappa-avg at strength s equals Grappa-avg over sets whose up projections are scaled by s."""
    sets = _sets(tiny_backbone)
    half = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="mean", strength=0.3)
    scaled = _sets(tiny_backbone)
    with torch.no_grad():
        for adaptor_set in scaled:
            for adaptor in adaptor_set.layers:
                adaptor.up.weight.mul_(0.3)
                adaptor.up.bias.mul_(0.3)
    reference = GrappaModel.with_adaptor_sets(tiny_backbone, scaled, fusion="mean")
    torch.testing.assert_close(half(images), reference(images), rtol=1e-5, atol=1e-6)


def test_strength_scales_the_delta_and_keeps_the_attention_as_trained(tiny_backbone, images):
    """Layer by layer: the output is x~ + y + s * (the full layer's delta), with the full layer's alpha."""
    model = GrappaModel.with_adaptor_sets(tiny_backbone, _sets(tiny_backbone), fusion="attention",
                                          attention_init="linear")
    x = tiny_backbone.stem(images)
    for index, layer in enumerate(model.layers):
        base, branch = tiny_backbone.layer_parts(index, x)
        layer.strength = 1.0
        h_full, alpha_full = layer(base, branch)
        layer.strength = 0.25
        h, alpha = layer(base, branch)
        torch.testing.assert_close(alpha, alpha_full)
        torch.testing.assert_close(h, base + branch + 0.25 * (h_full - base - branch), rtol=1e-5, atol=1e-6)
        h_ref, alpha_ref = layer.reference_forward(base, branch)  # the literal formula agrees
        torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alpha, alpha_ref, rtol=1e-4, atol=1e-6)
        x = h


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_a_strength_outside_the_unit_interval_is_refused(tiny_backbone, strength):
    model = GrappaModel.with_adaptor_sets(tiny_backbone, _sets(tiny_backbone, 1), fusion=None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.set_strength(strength)


def test_fusion_checkpoint_records_the_strength(tiny_backbone, images, tmp_path):
    sets = _sets(tiny_backbone, 2)
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention", strength=0.4)
    paths = []
    for i, s in enumerate(sets):
        paths.append(tmp_path / f"k{4 * (i + 1)}.safetensors")
        save_adaptor_set(paths[-1], s, backbone=tiny_backbone)
    path = tmp_path / "neighbor.safetensors"
    save_fusion(path, model.fusion_layers(), backbone=tiny_backbone, strength=model.strength)
    assert load_fusion(path, tiny_backbone).strength == 0.4
    loaded = GrappaModel.from_checkpoints(tiny_backbone, paths, path)
    assert loaded.strength == 0.4 and torch.equal(loaded(images), model(images))


def test_files_written_before_the_strength_existed_apply_the_whole_adaptation(tiny_backbone, tmp_path):
    model = GrappaModel.with_adaptor_sets(tiny_backbone, _sets(tiny_backbone, 2), fusion="mean", strength=0.5)
    fusion_path, bundle_path = tmp_path / "avg.safetensors", tmp_path / "model.safetensors"
    save_fusion(fusion_path, model.fusion_layers(), backbone=tiny_backbone, strength=0.5)
    save_bundle(bundle_path, model)
    for path in (fusion_path, bundle_path):
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata())
        assert meta.pop("strength") == "0.5"
        save_file(load_file(str(path)), str(path), metadata=meta)
    assert load_fusion(fusion_path, tiny_backbone).strength == 1.0
    assert load_layers(bundle_path, tiny_backbone)[0].strength == 1.0


def test_a_corrupt_strength_in_a_header_is_refused(tiny_backbone, tmp_path):
    model = GrappaModel.with_adaptor_sets(tiny_backbone, _sets(tiny_backbone, 2), fusion="mean")
    path = tmp_path / "avg.safetensors"
    save_fusion(path, model.fusion_layers(), backbone=tiny_backbone, strength=2.0 / 3.0)
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    meta["strength"] = "7"
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(GrappaError, match="strength"):
        load_fusion(path, tiny_backbone)
    bundle = tmp_path / "model.safetensors"
    save_bundle(bundle, model)
    with safe_open(str(bundle), framework="pt") as fh:
        meta = dict(fh.metadata())
    meta["strength"] = "half"
    save_file(load_file(str(bundle)), str(bundle), metadata=meta)
    with pytest.raises(GrappaError, match="strength"):
        read_bundle_metadata(bundle)


def test_bundle_keeps_the_strength(tiny_backbone, images, tmp_path):
    model = GrappaModel.with_adaptor_sets(tiny_backbone, _sets(tiny_backbone), fusion="attention", strength=0.6)
    path = tmp_path / "model.safetensors"
    save_bundle(path, model)
    assert read_bundle_metadata(path)["strength"] == 0.6
    loaded, _ = load_layers(path, tiny_backbone)
    with torch.inference_mode():
        assert torch.equal(loaded.eval()(images), model.eval()(images))
