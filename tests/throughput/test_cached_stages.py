"""`grappa adapt` and `grappa fuse` read the image cache when it is current, the image files otherwise;
under ``[data] cache = "auto"`` the first set that trains builds it."""

from __future__ import annotations

import json

import numpy as np

from grappa_cli.config import update_file
from grappa_cli.records import artifacts


def _cache_mode(project, mode: str) -> None:
    update_file(project.config_path, lambda doc: doc["data"].__setitem__("cache", mode))


def test_training_stages_use_the_cache_when_it_is_built(clustered_project, cli) -> None:
    project = clustered_project
    _cache_mode(project, "never")
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


def test_training_builds_the_cache_itself_when_asked(clustered_project, cli) -> None:
    project = clustered_project
    assert project.config().data.cache == "auto"  # the default: on a CPU it builds nothing, and says nothing
    result = cli("-C", project.root, "adapt", "--k", "2")
    assert result.exit_code == 0, result.stderr
    assert "Decoding" not in result.stderr and "speeds training up" not in result.stderr
    assert artifacts.read_checkpoint_record(project.adaptors_dir / "k2.safetensors")["input"] == "files"

    _cache_mode(project, "always")
    result = cli("-C", project.root, "adapt", "--k", "4")
    assert result.exit_code == 0, result.stderr
    assert "Decoding the 12 training images once into cache/train" in result.stderr
    assert artifacts.read_checkpoint_record(project.adaptors_dir / "k4.safetensors")["input"] == "cache"
    info = json.loads(cli("-C", project.root, "cache", "info", "--json").stdout)
    assert [(e["key"], e["state"], e["images"], e["stale"]) for e in info] == [("cache/train", "complete", 12, False)]

    _cache_mode(project, "auto")  # a current cache is read whatever the mode and device: not built again
    result = cli("-C", project.root, "adapt", "--k", "2", "--force")
    assert result.exit_code == 0, result.stderr
    assert "Decoding" not in result.stderr
    assert artifacts.read_checkpoint_record(project.adaptors_dir / "k2.safetensors")["input"] == "cache"


def test_auto_builds_on_a_gpu_when_the_cache_fits_the_disk(clustered_project, monkeypatch) -> None:
    from grappa_cli.pipeline.stages import cache

    project = clustered_project
    assert cache.automatic_plan(project, "auto", "cpu") == (None, "")
    assert cache.automatic_plan(project, "never", "cuda") == (None, "")
    planned, why_not = cache.automatic_plan(project, "auto", "cuda")
    assert planned is not None and why_not == ""
    assert (planned.key, planned.images, planned.state, planned.to_decode) == ("cache/train", 12, "missing", 12)

    monkeypatch.setattr(cache, "AUTO_DISK_SHARE", 0.0)  # any cache is more than no share of the free space
    planned, why_not = cache.automatic_plan(project, "auto", "cuda")
    assert planned is None and why_not.startswith("Not building the image cache: about ")
    assert "`grappa cache build` builds it anyway" in why_not
    planned, why_not = cache.automatic_plan(project, "always", "cpu")  # "always" asks about neither
    assert planned is not None and why_not == ""


def test_training_goes_on_from_the_files_when_the_cache_cannot_be_sized(clustered_project, cli) -> None:
    """Features whose record lacks the backbone's input size (an older version's) must not stop training."""
    from grappa_cli.pipeline.stages import cache

    project = clustered_project
    store = project.store()
    params = dict(store.provenance("features/train")["params"])
    params.pop("data_config")
    store.update("features/train", params=params)
    planned, why_not = cache.automatic_plan(project, "always", "cpu")
    assert planned is None and "does not record the backbone's input size" in why_not
    assert "`grappa cache build --size N` builds it" in why_not
