"""`grappa adapt` and `grappa fuse` read the image cache when it is current, the image files otherwise."""

from __future__ import annotations

import json

import numpy as np

from grappa_cli.records import artifacts


def test_training_stages_use_the_cache_when_it_is_built(clustered_project, cli) -> None:
    project = clustered_project
    result = cli("-C", project.root, "adapt", "--k", "2")
    assert result.exit_code == 0, result.stderr
    assert "grappa cache build" in result.stderr and "speeds training up" in result.stderr
    assert artifacts.read_checkpoint_record(project.adaptors_dir / "k2.safetensors")["input"] == "files"
    again = cli("-C", project.root, "adapt", "--k", "2")  # nothing trains: nothing to say about the cache
    assert again.exit_code == 0 and "cache build" not in again.stderr

    assert cli("-C", project.root, "cache", "build", "--yes").exit_code == 0
    result = cli("-C", project.root, "adapt", "--k", "4")
    assert result.exit_code == 0, result.stderr
    assert "cache build" not in result.stderr
    record = artifacts.read_checkpoint_record(project.adaptors_dir / "k4.safetensors")
    assert record["input"] == "cache" and record["images"] == 12 and np.isfinite(record["loss_curve"][0])

    result = cli("-C", project.root, "fuse", "--strategy", "neighbor", "--neighbors", "3", "--epochs", "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["epoch_losses"]) == 2
    record = artifacts.read_checkpoint_record(project.fusion_dir / "neighbor.safetensors")
    assert record["input"] == "cache" and len(record["info"]["graph_changes"]) == 1

    result = cli("-C", project.root, "fuse", "--strategy", "transform", "--json")
    assert result.exit_code == 0, result.stderr
    assert artifacts.read_checkpoint_record(project.fusion_dir / "transform.safetensors")["input"] == "cache"
