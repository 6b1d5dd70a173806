"""`grappa export MODEL file.onnx`: an ONNX graph that onnxruntime runs, equal to grappa's own embeddings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="the onnx extra (part of [dev]) is not installed")


def _images(folder: Path, transform, count: int = 6) -> torch.Tensor:
    """Real image files decoded and preprocessed as grappa does."""
    from grappa_cli.data.images import load_rgb

    paths = sorted(folder.rglob("*.png"))[:count]
    return torch.stack([transform(load_rgb(str(p))) for p in paths])


def _run(path: Path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})[0]


def test_a_fused_vit_model_runs_in_onnxruntime_like_load_model(fused_project, gallery_images, cli, tmp_path):
    from grappa_cli import load_model
    from grappa_cli.model.onnx_export import read_onnx_metadata

    onnx_path, bundle = tmp_path / "m.onnx", tmp_path / "m.safetensors"
    for path in (onnx_path, bundle):
        result = cli("-C", fused_project.root, "export", "fused:avg", path, "--json")
        assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "safetensors"
    model, transform = load_model(bundle)
    images = _images(gallery_images, transform)
    with torch.inference_mode():
        expected = model(images).numpy()
    got = _run(onnx_path, images)
    assert got.shape == expected.shape == (len(images), model.embed_dim)
    assert np.abs(got - expected).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # L2-normalised
    assert _run(onnx_path, images[:1]).shape == (1, model.embed_dim)  # the batch axis is dynamic

    meta = read_onnx_metadata(onnx_path)
    pre = meta["preprocessing"]
    assert pre["input_size"] == list(model.data_config["input_size"])
    assert pre["mean"] == list(model.data_config["mean"]) and pre["std"] == list(model.data_config["std"])
    identity = meta["model"]
    assert identity["name"] == "fused:avg" and identity["sets"] == ["k2", "k4"] and identity["strategy"] == "avg"
    assert identity["backbone"] == model.model_id and identity["strength"] == 1.0
    assert meta["provenance"]["stage"] == "export"


def test_a_cnn_with_a_router_runs_in_onnxruntime_like_grappa(tmp_path, gallery_images):
    """A CNN backbone (channels-last stages) and the router fusion, on real image files."""
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model import GrappaModel, build_backbone
    from grappa_cli.model.export import EmbeddingModel
    from grappa_cli.model.onnx_export import write_onnx
    from tests.model.backbones.conftest import cnn_spec
    from tests.model.conftest import trained_like_set

    backbone = build_backbone(cnn_spec("test_efficientnet"))
    sets = [trained_like_set(backbone, 8, seed=i) for i in range(2)]
    model = GrappaModel.with_adaptor_sets(backbone, sets, fusion="router").eval()
    generator = torch.Generator().manual_seed(0)
    for layer in model.fusion_layers():
        layer.set_table(torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.2, 0.8]]))
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
    path = tmp_path / "cnn.onnx"
    write_onnx(path, model, identity={"name": "fused:route"})
    images = _images(gallery_images, eval_transform(backbone.data_config))
    with torch.inference_mode():
        expected = EmbeddingModel(model)(images).numpy()
    assert np.abs(_run(path, images) - expected).max() < 1e-4


def test_the_format_comes_from_the_extension_or_the_option(fused_project, cli, tmp_path):
    result = cli("-C", fused_project.root, "export", "fused:avg", tmp_path / "model.onxx")
    assert result.exit_code == 1 and "cannot tell the format of model.onxx" in result.stderr
    assert ".onnx" in result.stderr and not (tmp_path / "model.onxx").exists()
    result = cli("-C", fused_project.root, "export", "fused:avg", tmp_path / "model.bin", "--format", "onnx")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "model.bin").read_bytes()[:2] != b"{\""  # a protobuf, not a safetensors header
    result = cli("-C", fused_project.root, "export", "fused:avg", tmp_path / "x.onnx", "--format", "tflite")
    assert result.exit_code == 1 and "unknown export format" in result.stderr


def test_without_onnx_the_command_names_the_extra(fused_project, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the package were not installed
    result = cli("-C", fused_project.root, "export", "fused:avg", tmp_path / "m.onnx")
    assert result.exit_code == 1 and "grappa-cli[onnx]" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
