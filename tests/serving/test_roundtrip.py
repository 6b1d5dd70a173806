"""Every backbone provider x every model kind: train, evaluate, export, load, embed the same.

One tiny project per backbone (a random tiny ViT; EfficientNet-Lite0 with its packaged
weights; random MobileNetV3 and ResNet) goes through the real commands: extract, cluster
(k = 2, 4), adapt, fuse with *every* registered fusion strategy, eval of every model. Then
each model is exported and read back with :func:`grappa_cli.load_model`, and its embeddings of
the task's test images must equal the ones ``grappa eval`` stored (float32 store).

CNN stages narrower than the bottleneck get ``D'_l = min(D', D_l - 1)``, so these projects
use a bottleneck (40) above the narrowest stage of every CNN here (8 to 32 channels): the per-layer widths must
survive every file format (adaptor sets, fusion checkpoints, whole-model bundles, exports).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomlkit
import torch
from PIL import Image
from safetensors import safe_open

from grappa_cli import load_model, plugins
from grappa_cli.storage.store import Store
from tests.conftest import make_image_folder
from tests.conftest import make_tiny_project as write_tiny_project
from tests.serving.conftest import run_cli

pytestmark = pytest.mark.slow

#: backbone settings per provider; ``input_size`` keeps the CNNs at 32 px.
BACKBONES = {
    "vit": {"name": "vit_small_patch16_224", "pretrained": False,
            "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}},
    "efficientnet_lite0": {"name": "efficientnet_lite0", "pretrained": True, "input_size": 32},
    "mobilenetv3": {"name": "mobilenetv3_small_050", "pretrained": False, "input_size": 32},
    "resnet": {"name": "test_resnet", "pretrained": False, "input_size": 32},
}
PROVIDERS = {"vit": "timm-vit", "efficientnet_lite0": "timm-cnn", "mobilenetv3": "timm-cnn", "resnet": "timm-cnn"}
BOTTLENECK = 40


def strategies() -> list[str]:
    return sorted(plugins.registry("fusion_strategies").items)


def configure(project, settings: dict) -> None:
    doc = tomlkit.parse(project.config_path.read_text())
    backbone = tomlkit.table()
    for key, value in settings.items():
        if key == "kwargs":
            table = tomlkit.inline_table()
            table.update(value)
            backbone[key] = table
        else:
            backbone[key] = value
    doc["backbone"] = backbone
    doc["data"]["feature_dtype"] = "float32"
    doc["adapt"]["bottleneck"] = BOTTLENECK
    doc["fuse"]["batch_size"] = 6
    doc["adapt"]["batch_size"] = 6
    project.config_path.write_text(tomlkit.dumps(doc))
    project.config()  # validates


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def trained_project(request, tmp_path_factory):
    """A project on 4 classes x 6 images with both adaptor sets, every fusion, every model evaluated."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp(request.param)
    images = make_image_folder(base / "images", size=32)
    project = write_tiny_project(base / "proj", images)
    configure(project, BACKBONES[request.param])
    for args in (("extract",), ("cluster", "--k", "2,4"), ("adapt",)):
        assert run_cli("-C", project.root, *args) == 0, args
    for strategy in strategies():
        assert run_cli("-C", project.root, "fuse", "--strategy", strategy) == 0, strategy
    assert run_cli("-C", project.root, "eval") == 0
    return request.param, project


def model_names() -> list[str]:
    return ["backbone", "adaptor:k2", "adaptor:k4", *(f"fused:{s}" for s in strategies())]


def eval_rows(cli, project) -> dict[str, dict]:
    """``grappa eval --json`` (everything already current): the result of each model on ``shapes``."""
    result = cli("-C", project.root, "eval", "--json")
    assert result.exit_code == 0, result.stderr
    return {r["model"]: r for r in json.loads(result.stdout)["results"] if r["task"] == "shapes"}


def test_every_fusion_strategy_trains_and_evaluates(trained_project, cli) -> None:
    """Each strategy's model has a result with real metric values on the task's test split."""
    kind, project = trained_project
    rows = eval_rows(cli, project)
    assert set(model_names()) <= set(rows), sorted(rows)
    for name in model_names():
        row = rows[name]
        assert row["images"] == 12 and row["unreadable"] == 0 and row["num_queries"] == 12, (kind, name, row)
        assert row["metrics"] and all(0.0 <= float(v) <= 100.0 for v in row["metrics"].values()), row
    assert rows["fused:supervised"]["uses_labels"] and not rows["fused:neighbor"]["uses_labels"]
    widths = {int(d) for d in _adaptor_widths(project)}
    if kind != "vit":  # the CNN really has layers narrower than the bottleneck
        assert min(widths) < BOTTLENECK and max(widths) == BOTTLENECK, widths


def _adaptor_widths(project) -> list[int]:
    with safe_open(str(project.adaptors_dir / "k4.safetensors"), framework="pt") as fh:
        names = sorted(fh.keys())
        return [fh.get_slice(k).get_shape()[0] for k in names if k.endswith("down.weight")]


@pytest.mark.parametrize("name", model_names())
def test_exported_model_embeds_like_eval(trained_project, cli, tmp_path, name) -> None:
    kind, project = trained_project
    out = tmp_path / "model.safetensors"
    result = cli("-C", project.root, "export", name, out, "--json")
    assert result.exit_code == 0, result.stderr
    loaded, transform = load_model(out)
    assert loaded.metadata["extra"]["provider"] == PROVIDERS[kind]

    store = Store(project.store_path)
    key = eval_rows(cli, project)[name]["embeddings"]
    stored = store.read(f"{key}/embeddings").astype(np.float32)
    paths = [str(p) for p in store.read(f"{key}/paths")]
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        got = loaded(images).numpy()
    expected = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    assert got.shape == expected.shape and len(got) == 12
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_old_bundle_headers_still_load(trained_project, tmp_path) -> None:
    """Files written when the header held only layer 0's bottleneck load from their tensor shapes."""
    from safetensors.torch import load_file, save_file

    from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
    from grappa_cli.model.bundle import load_layers, read_bundle_metadata

    _, project = trained_project
    path = project.fusion_dir / "random.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    first = int(json.loads(meta.pop("bottlenecks"))[0])
    meta["bottleneck"] = str(first)
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata=meta)
    assert read_bundle_metadata(old)["bottlenecks"] is None
    backbone = build_backbone(BackboneSpec.from_config(project.config()))
    new, _ = load_layers(path, backbone)
    again, _ = load_layers(old, backbone)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(new.eval()(images), again.eval()(images))


def test_paths_are_the_tasks_test_images(trained_project, cli) -> None:
    """The stored paths are the second half of the classes (what the comparison above embeds)."""
    _, project = trained_project
    store = Store(project.store_path)
    paths = [Path(str(p)) for p in store.read(f"{eval_rows(cli, project)['fused:avg']['embeddings']}/paths")]
    assert sorted({p.parent.name for p in paths}) == ["class_002", "class_003"]
