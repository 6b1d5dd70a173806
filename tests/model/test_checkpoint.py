"""Adaptor and fusion checkpoints: safetensors only, metadata, identity checks, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from grappa_cli.errors import GrappaError, StoreError
from grappa_cli.model import (
    GrappaModel,
    build_backbone,
    load_adaptor_set,
    load_fusion,
    read_metadata,
    save_adaptor_set,
    save_fusion,
)
from grappa_cli.records.artifacts import read_checkpoint_record
from tests.conftest import TINY_VIT_KWARGS

from .conftest import tiny_spec, trained_like_set

PROVENANCE = {"complete": True, "fingerprint": "abc123", "inputs": {"clusters/k8": "f00d"}, "stage": "adapt"}


def _fused_model(backbone, n=3):
    sets = [trained_like_set(backbone, seed=i) for i in range(n)]
    for i, s in enumerate(sets):
        s.k = 4 * (i + 1)
    return GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention"), sets


def test_saved_and_loaded_model_gives_identical_outputs(tiny_backbone, images, tmp_path):
    model, sets = _fused_model(tiny_backbone)
    paths = []
    for s in sets:
        path = tmp_path / "adaptors" / f"k{s.k}.safetensors"
        save_adaptor_set(path, s, backbone=tiny_backbone, provenance=PROVENANCE, config={"bottleneck": 16})
        paths.append(path)
    fusion_path = tmp_path / "fusion" / "neighbor.safetensors"
    save_fusion(
        fusion_path,
        model.fusion_layers(),
        backbone=tiny_backbone,
        provenance=PROVENANCE,
        adaptor_sets=[f"adaptors/k{s.k}" for s in sets],
        config={"lr": 0.5},
    )
    loaded = GrappaModel.from_checkpoints(tiny_backbone, paths, fusion_path)
    z, alpha = model(images, return_attention=True)
    z2, alpha2 = loaded(images, return_attention=True)
    assert torch.equal(z, z2) and torch.equal(alpha, alpha2)
    assert [s.k for s in (load_adaptor_set(p, tiny_backbone) for p in paths)] == [4, 8, 12]
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["adaptors", "fusion", "neighbor.safetensors"] + [p.name for p in paths]
    )  # no temp files


def test_metadata_records_what_stages_need(tiny_backbone, tmp_path):
    _, sets = _fused_model(tiny_backbone, n=1)
    path = tmp_path / "k4.safetensors"
    save_adaptor_set(path, sets[0], backbone=tiny_backbone, provenance=PROVENANCE, config={"epochs": 5})
    meta = read_metadata(path)
    assert meta["format"] == "grappa-adaptor-set"
    assert meta["model_id"] == tiny_backbone.model_id
    assert meta["k"] == "4" and meta["bottleneck"] == "16" and meta["num_sets"] == "1"
    assert meta["layer_dims"] == [64, 64, 64, 64]
    assert meta["backbone"]["num_layers"] == 4
    assert meta["config"] == {"epochs": 5}
    assert meta["grappa"] == PROVENANCE
    assert read_checkpoint_record(path) == PROVENANCE  # what `grappa status` reads
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["grappa"])["complete"] is True
        assert sorted(fh.keys())[:2] == ["layers.0.down.bias", "layers.0.down.weight"]


def test_mean_fusion_checkpoint_holds_no_tensors(tiny_backbone, images, tmp_path):
    _, sets = _fused_model(tiny_backbone, n=2)
    mean_model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="mean")
    path = tmp_path / "avg.safetensors"
    save_fusion(path, mean_model.fusion_layers(), backbone=tiny_backbone, provenance=PROVENANCE)
    checkpoint = load_fusion(path, tiny_backbone, num_sets=2)
    assert checkpoint.kind == "mean" and checkpoint.num_sets == 2 and checkpoint.provenance == PROVENANCE
    with safe_open(str(path), framework="pt") as fh:
        assert list(fh.keys()) == []
    rebuilt = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion=checkpoint.layers)
    assert torch.equal(rebuilt(images), mean_model(images))


def test_loading_onto_another_backbone_fails_clearly(tiny_backbone, tmp_path):
    _, sets = _fused_model(tiny_backbone, n=1)
    path = tmp_path / "k4.safetensors"
    save_adaptor_set(path, sets[0], backbone=tiny_backbone, provenance=PROVENANCE)
    deeper = build_backbone(tiny_spec(kwargs={**TINY_VIT_KWARGS, "depth": 5}))
    with pytest.raises(StoreError) as info:
        load_adaptor_set(path, deeper)
    message = str(info.value)
    assert str(path) in message and "4 layers vs 5" in message and "--force" in message
    # same shape, other weights: only the identity differs
    other = build_backbone(tiny_spec(kwargs={**TINY_VIT_KWARGS, "qkv_bias": False}))
    assert other.layer_dims == tiny_backbone.layer_dims
    with pytest.raises(StoreError, match=r"backbone '.*' vs the configured '.*'"):
        load_adaptor_set(path, other)


def test_fusion_for_another_number_of_sets_is_refused(tiny_backbone, tmp_path):
    model, _ = _fused_model(tiny_backbone, n=3)
    path = tmp_path / "neighbor.safetensors"
    save_fusion(path, model.fusion_layers(), backbone=tiny_backbone, provenance=PROVENANCE)
    with pytest.raises(StoreError, match="fuses 3 adaptor sets, the model has 2"):
        load_fusion(path, tiny_backbone, num_sets=2)


def test_wrong_kind_of_file_is_refused(tiny_backbone, tmp_path):
    _, sets = _fused_model(tiny_backbone, n=1)
    path = tmp_path / "k4.safetensors"
    save_adaptor_set(path, sets[0], backbone=tiny_backbone)
    with pytest.raises(GrappaError, match="not a grappa-fusion file"):
        load_fusion(path, tiny_backbone)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GrappaError, match="not a readable safetensors file"):
        load_adaptor_set(tmp_path / "junk.safetensors", tiny_backbone)
    with pytest.raises(StoreError, match="does not exist"):
        load_adaptor_set(tmp_path / "absent.safetensors", tiny_backbone)


def test_failed_write_keeps_the_old_file(tiny_backbone, tmp_path, monkeypatch):
    _, sets = _fused_model(tiny_backbone, n=2)
    path = tmp_path / "k4.safetensors"
    save_adaptor_set(path, sets[0], backbone=tiny_backbone, provenance=PROVENANCE)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    import grappa_cli.model.checkpoint as checkpoint_mod

    monkeypatch.setattr(checkpoint_mod, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        save_adaptor_set(path, sets[1], backbone=tiny_backbone, provenance=PROVENANCE)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["k4.safetensors"]


@pytest.mark.parametrize("header", ["current", "without fusion kind"])
def test_attention_fused_single_set_bundle_loads(tiny_backbone, images, tmp_path, header):
    """One set fused by attention (a project with one k) keeps Q, K and a scale; they must load,
    also from files whose header left the fusion kind empty for a single set."""
    from safetensors.torch import load_file, save_file

    from grappa_cli.model.bundle import load_layers, read_bundle_metadata, save_bundle
    from grappa_cli.model.grappa import GrappaModel

    model = GrappaModel.with_adaptor_sets(tiny_backbone, [trained_like_set(tiny_backbone)], fusion="attention")
    with torch.no_grad():
        for layer in model.fusion_layers():
            layer.logit_scale.fill_(1.5)
    path = tmp_path / "one.safetensors"
    save_bundle(path, model)
    assert read_bundle_metadata(path)["fusion"] == "attention"
    if header == "without fusion kind":
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata())
        meta["fusion"] = ""
        save_file(load_file(str(path)), str(path), metadata=meta)
    loaded, _ = load_layers(path, tiny_backbone)
    assert loaded.fusion_kind == "attention"
    for ours, theirs in zip(model.fusion_layers(), loaded.fusion_layers(), strict=True):
        assert torch.equal(ours.query.weight, theirs.query.weight) and float(theirs.logit_scale) == 1.5
    with torch.inference_mode():
        assert torch.equal(model.eval()(images), loaded.eval()(images))
