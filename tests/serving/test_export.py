"""`grappa export` and `grappa_cli.load_model`: stand-alone files that embed like the project."""

from __future__ import annotations

import json
import os
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from grappa_cli import load_model
from grappa_cli.data.transforms import eval_transform
from grappa_cli.errors import GrappaError
from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
from grappa_cli.pipeline.stages import models
from grappa_cli.records import artifacts
from tests.conftest import copy_project


def project_embedder(project, name):
    """The project's model ``name`` as (L2-normalised embedding function, its backbone)."""
    backbone = build_backbone(BackboneSpec.from_config(project.config()))
    model = models.load(project, models.parse(name), backbone).eval()
    return model, backbone


def image_batch(images: Path, transform, n: int = 6) -> torch.Tensor:
    paths = sorted(images.rglob("*.png"))[:n]
    return torch.stack([transform(Image.open(p)) for p in paths])


def raw_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


@pytest.mark.parametrize("name", ["backbone", "adaptor:k4", "fused:avg"])
def test_exported_model_embeds_like_the_project(fused_project, gallery_images, cli, tmp_path, name) -> None:
    out = tmp_path / "model.safetensors"
    result = cli("-C", fused_project.root, "export", name, out, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model"] == name and info["includes_backbone"] and Path(info["path"]) == out
    assert info["num_sets"] == {"backbone": 0, "adaptor:k4": 1, "fused:avg": 2}[name]

    loaded, transform = load_model(out)
    reference, backbone = project_embedder(fused_project, name)
    images = image_batch(gallery_images, eval_transform(backbone.data_config))
    # the stored preprocessing is the project's
    assert torch.equal(image_batch(gallery_images, transform), images)
    with torch.inference_mode():
        got, expected = loaded(images), reference.embed(images)
    assert got.shape == (len(images), backbone.embed_dim)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(images)), atol=1e-6)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.name == name and loaded.model_id == backbone.model_id

    # provenance: the artifacts it came from, with their current fingerprints
    record = loaded.metadata["grappa"]
    expected_inputs = {
        "backbone": {},
        "adaptor:k4": {"adaptors/k4": artifacts.fingerprint(fused_project, "adaptors/k4")},
        "fused:avg": {a: artifacts.fingerprint(fused_project, a) for a in ("fusion/avg", "adaptors/k2", "adaptors/k4")},
    }[name]
    assert record["inputs"] == expected_inputs and record["complete"] and record["stage"] == "export"
    assert set(record["sources"]) == set(expected_inputs)
    assert record["versions"]["timm"] == version("timm") and record["versions"]["torch"] == version("torch")
    assert loaded.metadata["backbone_spec"]["kwargs"] == fused_project.config().backbone.kwargs
    assert loaded.metadata["extra"]["provider"] == "timm-vit"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "a temporary file was left behind"


def test_loads_without_the_project_and_offline(fused_project, gallery_images, cli, tmp_path) -> None:
    from tests.conftest import make_image_folder

    project = copy_project(fused_project, tmp_path / "copy")
    exported = tmp_path / "proj-export.safetensors"
    assert cli("-C", project.root, "export", "fused:avg", exported).exit_code == 0
    reference, backbone = project_embedder(project, "fused:avg")
    images = make_image_folder(tmp_path / "queries", n_classes=2, per_class=2, seed=5)
    batch = image_batch(images, eval_transform(backbone.data_config))
    with torch.inference_mode():
        expected = reference.embed(batch).numpy()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = shutil.move(str(exported), elsewhere / "model.safetensors")
    shutil.rmtree(project.root)

    script = (
        "import sys, numpy as np, torch\n"
        "from pathlib import Path\nfrom PIL import Image\n"
        "from grappa_cli import load_model\n"
        "model, transform = load_model(sys.argv[1])\n"
        "paths = sorted(Path(sys.argv[2]).rglob('*.png'))\n"
        "with torch.inference_mode():\n"
        "    z = model(torch.stack([transform(Image.open(p)) for p in paths]))\n"
        "np.save(sys.argv[3], z.numpy())\n"
    )
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "GRAPPA_PROJECT"}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script, str(moved), str(images), str(elsewhere / "z.npy")],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(elsewhere / "z.npy"), expected, atol=1e-6)


def test_tampered_weights_are_refused(fused_project, cli, tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    assert cli("-C", fused_project.root, "export", "fused:avg", path).exit_code == 0
    meta = raw_metadata(path)
    tensors = load_file(str(path))
    load_model(path)  # the untouched file loads

    key = next(k for k in sorted(tensors) if k.startswith("backbone.") and k.endswith("blocks.1.mlp.fc1.weight"))
    tampered = dict(tensors)
    tampered[key] = tensors[key].clone()
    tampered[key][0, 0] += 1e-3
    save_file(tampered, str(tmp_path / "tampered.safetensors"), metadata=meta)
    with pytest.raises(GrappaError, match="model_id") as info:
        load_model(tmp_path / "tampered.safetensors")
    assert meta["model_id"] in str(info.value)

    layers = dict(tensors)
    key = next(k for k in sorted(tensors) if k.startswith("layers.") and "up" in k)
    layers[key] = tensors[key] + 1e-3
    save_file(layers, str(tmp_path / "layers.safetensors"), metadata=meta)
    with pytest.raises(GrappaError, match=r"adaptor and fusion weights .* do not match"):
        load_model(tmp_path / "layers.safetensors")


def test_no_backbone_file_needs_the_weights(fused_project, gallery_images, cli, tmp_path) -> None:
    full, slim = tmp_path / "full.safetensors", tmp_path / "slim.safetensors"
    assert cli("-C", fused_project.root, "export", "fused:avg", full).exit_code == 0
    result = cli("-C", fused_project.root, "export", "fused:avg", slim, "--no-backbone")
    assert result.exit_code == 0, result.stderr
    assert "WITHOUT backbone weights" in result.stdout
    assert not any(k.startswith("backbone.") for k in load_file(str(slim)))
    assert slim.stat().st_size < full.stat().st_size / 4

    with pytest.raises(GrappaError, match=r"holds no backbone weights .*--no-backbone.*backbone_weights=FILE"):
        load_model(slim)

    reference, _ = load_model(full)
    images = image_batch(gallery_images, eval_transform(reference.data_config))
    with torch.inference_mode():
        expected = reference(images)
    # the timm model's own weights, as a user would download them
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in reference.backbone.model.state_dict().items()}, str(weights))
    for model, _ in (load_model(slim, backbone_weights=weights), load_model(slim, rebuild_backbone=True)):
        with torch.inference_mode():
            assert torch.equal(model(images), expected)

    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in reference.backbone.model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(GrappaError, match="not the ones the model was trained with"):
        load_model(slim, backbone_weights=tmp_path / "other.safetensors")


def test_export_errors_and_overwrite(fused_project, cli, tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    assert cli("-C", fused_project.root, "export", "adaptor:k2", path).exit_code == 0
    first = path.read_bytes()
    result = cli("-C", fused_project.root, "export", "fused:avg", path)
    assert result.exit_code == 1 and "already exists" in result.stderr and "--force" in result.stderr
    assert path.read_bytes() == first
    result = cli("-C", fused_project.root, "export", "fused:avg", path, "--force")
    assert result.exit_code == 0, result.stderr
    assert raw_metadata(path)["num_sets"] == "2"

    # one argument: the file, and the project's default model (here its only fused model, Grappa-avg)
    default = tmp_path / "default.safetensors"
    result = cli("-C", fused_project.root, "export", default, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "fused:avg" and raw_metadata(default)["num_sets"] == "2"

    result = cli("-C", fused_project.root, "export", "fused:neighbor", tmp_path / "n.safetensors")
    assert result.exit_code == 1 and "no model 'fused:neighbor'" in result.stderr
    result = cli("-C", fused_project.root, "export", "fusion:avg", tmp_path / "n.safetensors")
    assert result.exit_code == 2 and "unknown model name" in result.stderr
    result = cli("-C", fused_project.root, "export", "backbone", tmp_path)
    assert result.exit_code == 1 and "is a directory" in result.stderr
    assert not (tmp_path / "n.safetensors").exists()

    (tmp_path / "not-a-model.safetensors").write_bytes(b"garbage")
    with pytest.raises(GrappaError, match="not a readable safetensors file"):
        load_model(tmp_path / "not-a-model.safetensors")
    with pytest.raises(GrappaError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
