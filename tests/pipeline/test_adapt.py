"""`grappa adapt`: one adaptor set per pseudo-label set, trained on the frozen backbone."""

from __future__ import annotations

import json

import pytest
import torch

from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
from grappa_cli.model.checkpoint import load_adaptor_set
from grappa_cli.model.grappa import GrappaModel
from grappa_cli.records import artifacts


def test_adapt_trains_one_set_per_k(adapted_project, cli) -> None:
    project = adapted_project
    for k in (2, 4):
        path = project.adaptors_dir / f"k{k}.safetensors"
        record = artifacts.read_checkpoint_record(path)
        assert record["complete"] and record["params"]["k"] == k
        assert record["inputs"][f"clusters/k{k}"] == project.store(mode="r").provenance(f"clusters/k{k}")[
            "fingerprint"]
        assert len(record["loss_curve"]) == 1 and record["loss_curve"][0] > 0
        assert not (project.runs_dir / f"adapt-k{k}" / "checkpoint.pt").exists()
        assert (project.runs_dir / f"adapt-k{k}" / "metrics.jsonl").exists()


def test_saved_set_changes_the_model_and_backbone_is_untouched(adapted_project) -> None:
    project = adapted_project
    backbone = build_backbone(BackboneSpec.from_config(project.config()))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    adaptor_set = load_adaptor_set(project.adaptors_dir / "k4.safetensors", backbone)
    assert any(bool(a.up.weight.abs().sum() > 0) for a in adaptor_set.layers), "training moved the up-projections"
    model = GrappaModel.with_adaptor_sets(backbone, [adaptor_set], fusion=None).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        assert not torch.allclose(model(images), backbone(images))
    # a fresh build of the backbone has the same (seeded) weights: training never touched them
    for key, value in build_backbone(BackboneSpec.from_config(project.config())).state_dict().items():
        assert torch.equal(value, before[key])


def test_rerun_skips_complete_sets(adapted_project, cli) -> None:
    result = cli("-C", adapted_project.root, "adapt", "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["skipped"] for r in json.loads(result.stdout)] == [True, True]


def test_changed_settings_are_refused_then_forced(adapted_project, cli) -> None:
    result = cli("-C", adapted_project.root, "adapt", "--k", "2", "--epochs", "2")
    assert result.exit_code == 1
    assert "k2.safetensors was trained with other inputs or settings" in result.stderr
    assert "epochs (1 -> 2)" in result.stderr
    result = cli("-C", adapted_project.root, "adapt", "--k", "2", "--epochs", "2", "--force", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)[0]["epoch_losses"]) == 2


def test_missing_inputs_name_the_command(extracted_project, tiny_project, cli, tmp_path) -> None:
    result = cli("-C", extracted_project.root, "adapt")
    assert result.exit_code == 1 and "run `grappa cluster`" in result.stderr
    from grappa_cli.setup.init import create_project

    fresh = create_project(tmp_path / "fresh")
    result = cli("-C", fresh.root, "adapt")
    assert result.exit_code == 1 and "run `grappa extract`" in result.stderr


def test_unknown_k_lists_the_stored_ones(clustered_project, cli) -> None:
    result = cli("-C", clustered_project.root, "adapt", "--k", "8")
    assert result.exit_code == 1
    assert "no complete clustering for k8; stored: k2, k4" in result.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_adapt_under_torchrun_with_two_gloo_processes(clustered_project) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "GRAPPA_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "grappa_cli", "-C", str(clustered_project.root), "adapt", "--k", "4", "--epochs", "2"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = clustered_project.adaptors_dir / "k4.safetensors"
    record = artifacts.read_checkpoint_record(path)
    assert record["complete"] and len(record["loss_curve"]) == 2
    backbone = build_backbone(BackboneSpec.from_config(clustered_project.config()))
    model = GrappaModel.with_adaptor_sets(backbone, [load_adaptor_set(path, backbone)], fusion=None).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert not torch.allclose(model(images), backbone(images))


def test_prototypes_start_at_the_normalised_centroids(clustered_project) -> None:
    """The classifier starts as the nearest-centroid rule that made the pseudo-labels."""
    import numpy as np

    from grappa_cli.pipeline.stages.adapt import initial_prototypes
    from grappa_cli.train.optim.losses import NormSoftmaxLoss

    store = clustered_project.store(mode="r")
    centroids = store.read("clusters/k4/centroids")
    features = store.read("features/train/embeddings")
    labels = store.read("clusters/k4/labels")
    weight = initial_prototypes(store, 4, {"prototypes": "centroids"}, centroids.shape[1])
    assert weight.shape == (4, centroids.shape[1])
    np.testing.assert_allclose(weight.norm(dim=1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(weight.numpy() * np.linalg.norm(centroids, axis=1, keepdims=True), centroids,
                               rtol=1e-5, atol=1e-6)
    criterion = NormSoftmaxLoss(centroids.shape[1], 4, scale=20.0, weight=weight)
    # the start is the cosine classifier to the centroids, by hand
    x = features.astype(np.float64)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (centroids / np.linalg.norm(centroids, axis=1,
                                                                                      keepdims=True)).T
    logits = criterion.logits(torch.from_numpy(features.astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(logits, 20.0 * cos, atol=1e-4)
    assert (logits.argmax(1) == labels).mean() > 0.5  # mostly the pseudo-labels already
    assert initial_prototypes(store, 4, {"prototypes": "random"}, centroids.shape[1]) is None


def test_small_sets_train_for_min_steps() -> None:
    from grappa_cli.train.optim.schedule import fit_to_size

    assert fit_to_size(133_339, 256, 5, 100) == (256, 5)  # MRT: an epoch is 520 steps; nothing changes
    assert fit_to_size(800, 256, 5, 100) == (50, 7)  # 1/16 of the images per batch, 16 steps/epoch -> 7 epochs
    assert fit_to_size(200, 256, 5, 100) == (32, 15)  # at least 32 per batch, 6 steps/epoch, at most 3x epochs
    assert fit_to_size(200, 256, 10, 100) == (32, 17)
    assert fit_to_size(20, 8, 1, 0) == (8, 1)  # a smaller configured batch is kept; min_steps 0 = epochs
    assert fit_to_size(10, 256, 1, 0) == (10, 1)  # never more than the set
