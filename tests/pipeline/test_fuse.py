"""`grappa fuse`: strategies, what they train, what they save, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
from grappa_cli.model.checkpoint import load_adaptor_set
from grappa_cli.model.grappa import GrappaModel
from grappa_cli.pipeline.stages import models
from grappa_cli.records import artifacts


def _model(project, name):
    backbone = build_backbone(BackboneSpec.from_config(project.config()))
    return models.load(project, models.parse(name), backbone), backbone


def test_avg_equals_mean_of_the_sets(adapted_project, cli) -> None:
    from grappa_cli.config import update_file

    # half of the adaptation, so that "differs from the whole model" below is a real check
    update_file(adapted_project.config_path, lambda doc: doc["fuse"].__setitem__("strength", 0.5))
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "avg")
    assert result.exit_code == 0, result.stderr
    fused, backbone = _model(adapted_project, "fused:avg")
    sets = [load_adaptor_set(adapted_project.adaptors_dir / f"k{k}.safetensors", backbone) for k in (2, 4)]
    images = torch.randn(2, 3, 32, 32)
    strength = adapted_project.config().fuse.strength  # the saved model applies this share of it
    assert fused.strength == strength
    with torch.inference_mode():
        z, alpha = fused.eval()(images, return_attention=True)
        reference = GrappaModel.with_adaptor_sets(backbone, sets, fusion="mean", strength=strength).eval()(images)
        whole = GrappaModel.with_adaptor_sets(backbone, sets, fusion="mean").eval()(images)
    assert torch.allclose(alpha, torch.full_like(alpha, 0.5))
    assert torch.allclose(z, reference, atol=1e-6)
    assert strength == 0.5 and not torch.allclose(z, whole, atol=1e-4)
    record = artifacts.read_checkpoint_record(adapted_project.fusion_dir / "avg.safetensors")
    assert record["params"]["sets"] == ["k2", "k4"] and not record["uses_labels"]
    assert record["params"]["strength"] == strength


def test_a_changed_strength_makes_the_fused_model_stale(adapted_project, cli) -> None:
    from grappa_cli.config import update_file

    assert cli("-C", adapted_project.root, "fuse", "--strategy", "avg").exit_code == 0
    assert _model(adapted_project, "fused:avg")[0].strength == 1.0  # the default: the paper's model
    update_file(adapted_project.config_path, lambda doc: doc["fuse"].__setitem__("strength", 0.5))
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "avg")
    assert result.exit_code != 0 and "strength" in result.stderr and "--force" in result.stderr
    assert cli("-C", adapted_project.root, "fuse", "--strategy", "avg", "--force").exit_code == 0
    fused, _ = _model(adapted_project, "fused:avg")
    assert fused.strength == 0.5


def test_neighbor_trains_only_q_and_k(adapted_project, cli) -> None:
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "neighbor", "--neighbors", "3", "--epochs", "2",
                 "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["epoch_losses"]) == 2 and all(np.isfinite(data["epoch_losses"]))
    fused, backbone = _model(adapted_project, "fused:neighbor")
    for index, k in enumerate((2, 4)):
        stored = load_adaptor_set(adapted_project.adaptors_dir / f"k{k}.safetensors", backbone)
        for layer, adaptor in zip(fused.layers, stored.layers, strict=True):
            assert torch.equal(layer.bank.adaptor(index).up.weight, adaptor.up.weight)
    record = artifacts.read_checkpoint_record(adapted_project.fusion_dir / "neighbor.safetensors")
    assert record["params"]["neighbors"] == 3
    assert len(record["info"]["graph_changes"]) == 1
    fresh = GrappaModel.with_adaptor_sets(backbone, [load_adaptor_set(
        adapted_project.adaptors_dir / f"k{k}.safetensors", backbone) for k in (2, 4)], fusion="attention")
    torch.manual_seed(record["params"]["seed"])
    # Q/K moved away from any fresh initialisation of the same seed
    assert not torch.equal(fused.layers[0].fusion.query.weight, fresh.layers[0].fusion.query.weight)


def test_random_baselines_train_their_own_adaptors(adapted_project, cli) -> None:
    for strategy in ("single-random", "random"):
        # two epochs of one step: the first step is the warm-up's zero learning rate
        result = cli("-C", adapted_project.root, "fuse", "--strategy", strategy, "--epochs", "2")
        assert result.exit_code == 0, result.stderr
    single, _ = _model(adapted_project, "fused:single-random")
    assert single.num_sets == 1
    many, backbone = _model(adapted_project, "fused:random")
    assert many.num_sets == 2
    # the up-projections start at zero: non-zero ones were trained, and they are not the stored sets
    assert all(bool(layer.bank.up_weight.abs().sum() > 0) for layer in many.layers)
    stored = load_adaptor_set(adapted_project.adaptors_dir / "k2.safetensors", backbone)
    assert not torch.equal(many.layers[0].bank.adaptor(0).up.weight, stored.layers[0].up.weight)
    record = artifacts.read_checkpoint_record(adapted_project.fusion_dir / "random.safetensors")
    assert record["params"]["optimizer"] == "adam" and record["complete"]


def test_errors(clustered_project, adapted_project, cli) -> None:
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "neighbour")
    assert result.exit_code == 1
    assert "unknown fusion strategy 'neighbour'" in result.stderr and "did you mean 'neighbor'" in result.stderr
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "transform", "--batch-size", "1")
    assert result.exit_code == 1 and "too few for Barlow Twins" in result.stderr
    result = cli("-C", adapted_project.root, "fuse", "--sets", "k2,k64")
    assert result.exit_code == 1 and "no trained adaptor set k64" in result.stderr


def test_no_adaptor_sets_says_run_adapt(clustered_project, cli) -> None:
    result = cli("-C", clustered_project.root, "fuse", "--strategy", "avg")
    assert result.exit_code == 1 and "run `grappa adapt`" in result.stderr


@pytest.mark.parametrize("strategy", ["transform"])
def test_inspect_shows_attention(adapted_project, cli, strategy) -> None:
    # three epochs: the first step is the warm-up's zero learning rate
    assert cli("-C", adapted_project.root, "fuse", "--strategy", strategy, "--epochs", "3").exit_code == 0
    result = cli("-C", adapted_project.root, "fuse", "--strategy", strategy, "--inspect", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    train = report["groups"]["training set"]
    assert train["images"] == 12
    assert np.allclose(np.sum(train["mean"]), 1.0, atol=1e-5)
    assert len(train["per_layer"]) == 4 and "shapes" in report["groups"]
    # the training log: the start (epoch 0) is exactly uniform, then one row per epoch
    log = report["training"]
    epochs = artifacts.read_checkpoint_record(adapted_project.fusion_dir / f"{strategy}.safetensors")["params"]
    assert [row["epoch"] for row in log] == list(range(epochs["epochs"] + 1))
    assert log[0]["entropy"] == pytest.approx(1.0, abs=1e-6) and log[0]["logit_scale"] == 0.0
    assert log[0]["mean_alpha"] == pytest.approx([0.5, 0.5], abs=1e-6)
    assert all(row["q_norm"] > 0 and row["k_norm"] > 0 for row in log)
    assert log[-1]["logit_scale"] != 0.0  # the scale moved: the attention can leave Grappa-avg
    text = cli("-C", adapted_project.root, "fuse", "--strategy", strategy, "--inspect")
    assert "during training" in text.stdout and "logit scale" in text.stdout


def test_inspecting_grappa_avg_decodes_no_image(adapted_project, cli, monkeypatch) -> None:
    """Grappa-avg weighs every set 1/N on every image: the report's heat table needs no forward pass."""
    from grappa_cli.data import images
    from grappa_cli.pipeline.stages.fuse import inspect_attention

    assert cli("-C", adapted_project.root, "fuse", "--strategy", "avg").exit_code == 0

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded to inspect Grappa-avg")

    monkeypatch.setattr(images.ImageDataset, "__init__", refuse)
    report = inspect_attention(adapted_project, "avg")
    store = adapted_project.store(mode="r")
    for label, key in [("training set", "features/train"), ("shapes", "features/test/shapes")]:
        group = report["groups"][label]
        assert group["images"] == int(np.asarray(store.read(f"{key}/valid")).sum())
        assert np.allclose(group["per_layer"], 0.5) and len(group["per_layer"]) == 4
    assert report["groups"]["training set"]["images"] == 12  # as the forward pass counts them (above)


def test_sets_of_another_backbone_are_refused(adapted_project, cli) -> None:
    from grappa_cli.config import update_file

    def other_backbone(doc):
        doc["backbone"]["kwargs"]["depth"] = 3

    update_file(adapted_project.config_path, other_backbone)
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "avg")
    assert result.exit_code == 1
    assert "k2.safetensors" in result.stderr and "backbone" in result.stderr


def test_neighbor_on_the_static_backbone_graph_with_balance(adapted_project, cli, monkeypatch) -> None:
    """``fuse.graph = "backbone"``: one graph from the stored features, never rebuilt (the model never
    embeds the training set); the balance weight reaches the record and the attention stays finite."""
    from grappa_cli.config import update_file
    from grappa_cli.fusion import neighbors

    def no_embedding(*args, **kwargs):
        raise AssertionError("a static graph must not embed the training set with the model")

    monkeypatch.setattr(neighbors, "embed_paths", no_embedding)
    monkeypatch.setattr(neighbors, "embed_cached", no_embedding)

    def static(doc):
        doc["fuse"]["graph"] = "backbone"
        doc["fuse"]["balance"] = 2.0

    update_file(adapted_project.config_path, static)
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "neighbor", "--neighbors", "3", "--epochs", "3",
                 "--json")
    assert result.exit_code == 0, result.stderr
    assert all(np.isfinite(json.loads(result.stdout)["epoch_losses"]))
    record = artifacts.read_checkpoint_record(adapted_project.fusion_dir / "neighbor.safetensors")
    assert record["params"]["graph"] == "backbone" and record["params"]["balance"] == 2.0
    assert record["info"]["graph_changes"] == [0.0, 0.0]  # the same graph at every epoch
    fused, _ = _model(adapted_project, "fused:neighbor")
    with torch.inference_mode():
        _, alpha = fused.eval()(torch.randn(4, 3, 32, 32), return_attention=True)
    assert torch.isfinite(alpha).all() and torch.allclose(alpha.sum(-1), torch.ones(4, alpha.shape[1]))


def test_fusion_settings_are_checked(adapted_project, cli) -> None:
    import re

    original = adapted_project.config_path.read_text()
    for key, bad in (("graph", '"features"'), ("balance", "-1.0")):
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {bad}", original)
        assert text != original
        adapted_project.config_path.write_text(text)
        result = cli("-C", adapted_project.root, "fuse", "--strategy", "neighbor")
        assert result.exit_code != 0 and f"fuse.{key}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (adapted_project.fusion_dir / "neighbor.safetensors").exists()


def test_backbone_graph_is_the_knn_graph_of_the_stored_features(adapted_project) -> None:
    from types import SimpleNamespace

    from grappa_cli.fusion.neighbors import knn_graph
    from grappa_cli.fusion.strategies import _backbone_graph

    store = adapted_project.store(mode="r")
    features = np.asarray(store.read("features/train/embeddings"), dtype=np.float32)
    valid = np.flatnonzero(store.read("features/train/valid"))
    context = SimpleNamespace(params={"graph": "backbone"}, store=store)
    graph = _backbone_graph(context, 2)
    assert graph.shape == (len(valid), 2)
    assert np.array_equal(graph, knn_graph(features[valid], 2))
    rows = valid[::2]  # positions refer to the rows given
    assert np.array_equal(_backbone_graph(context, 2, rows), knn_graph(features[rows], 2))
    assert _backbone_graph(SimpleNamespace(params={}, store=store), 2) is None


@pytest.mark.parametrize("optimizer", ["adam", "lars"])
def test_neighbor_optimizer_moves_q_and_k_only_under_adam(adapted_project, cli, optimizer) -> None:
    """Under the paper's LARS the weight decay outweighs the gradients of Q and K: every layer's
    |Q| and |K| shrink and the attention hardly leaves uniform. Adam (no weight decay, the
    default) lets them grow where the loss asks, and the attention leaves uniform (entropy < 1)."""
    from grappa_cli.config import update_file

    update_file(adapted_project.config_path, lambda doc: doc["fuse"].__setitem__("optimizer", optimizer))
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "neighbor", "--neighbors", "3", "--epochs", "6")
    assert result.exit_code == 0, result.stderr
    record = artifacts.read_checkpoint_record(adapted_project.fusion_dir / "neighbor.safetensors")
    assert record["params"]["optimizer"] == optimizer and ("adam_lr" in record["params"]) == (optimizer == "adam")
    first, last = record["attention"][0], record["attention"][-1]
    assert first["entropy"] == pytest.approx(1.0, abs=1e-6) and first["logit_scale"] == 0  # starts at Grappa-avg
    if optimizer == "adam":  # under LARS even the 1-D scales barely move (about 1e-6 here)
        assert abs(last["logit_scale"]) > 0.01
        assert last["q_norm"] > 0.999 * first["q_norm"] and last["k_norm"] > 0.999 * first["k_norm"]  # hold
    else:
        assert last["q_norm"] < first["q_norm"] and last["k_norm"] < first["k_norm"]
