"""``grappa cache build | info | clear`` through the CLI, on a project made with the Store API."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from grappa_cli.data import cache as image_cache

from .conftest import write_features_train


def test_build_info_rebuild_and_clear(cli, cache_project, cache_images) -> None:
    root = str(cache_project.root)
    result = cli("-C", root, "cache", "build", "--yes", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    assert "image cache" in result.stdout and f"{len(cache_images)}" in result.stdout
    assert "36x36" in result.stderr and "uncompressed" in result.stderr
    assert "broken.jpg" in result.stderr  # the unreadable file is listed, the build went on
    store = cache_project.store()
    assert store.read("cache/train/images").shape == (len(cache_images), 36, 36, 3)
    assert store.provenance("cache/train")["complete"]

    info = cli("-C", root, "cache", "info", "--json")
    assert info.exit_code == 0, info.stderr
    (entry,) = json.loads(info.stdout)
    assert entry["key"] == "cache/train" and entry["state"] == "complete" and not entry["stale"]
    assert entry["images"] == len(cache_images) and entry["bad"] == 1 and entry["size"] == 36
    assert entry["bytes_on_disk"] == image_cache.stored_bytes(store, "cache/train") > 0
    table = cli("-C", root, "cache", "info")
    assert "cache/train" in table.stdout and "complete" in table.stdout

    again = cli("-C", root, "cache", "build", "--yes")
    assert again.exit_code == 0 and "already complete" in again.stdout

    other = cli("-C", root, "cache", "build", "--yes", "--size", "40")
    assert other.exit_code == 1 and "--force" in other.stderr and "size" in other.stderr

    # the training set changes: the cache is reported stale
    write_features_train(store, cache_images[:-2])
    assert json.loads(cli("-C", root, "cache", "info", "--json").stdout)[0]["stale"] is True

    cleared = cli("-C", root, "cache", "clear", "--yes")
    assert cleared.exit_code == 0 and "cache/train" in cleared.stdout
    assert json.loads(cli("-C", root, "cache", "info", "--json").stdout) == []
    assert not (cache_project.store_path / "cache" / "train").exists()


def test_build_json_output_and_explicit_size(cli, cache_project, cache_images) -> None:
    result = cli("-C", str(cache_project.root), "cache", "build", "--yes", "--size", "20", "--json",
                 "--workers", "0")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["size"] == 20 and doc["images"] == len(cache_images) and doc["built"] == len(cache_images)
    assert doc["raw_bytes"] == image_cache.estimate_cache_bytes(len(cache_images), 20)
    assert [b["path"].endswith("broken.jpg") for b in doc["bad"]] == [True]


def test_declining_the_confirmation_writes_nothing(cli, cache_project, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    result = cli("-C", str(cache_project.root), "cache", "build")
    assert result.exit_code == 1 and "nothing was written" in result.stderr
    assert "about" in result.stderr  # the size was shown before asking
    assert not cache_project.store().exists("cache/train")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    no_input = cli("-C", str(cache_project.root), "cache", "build")
    assert no_input.exit_code == 2 and "--yes" in no_input.stderr


def test_accepting_the_confirmation_builds(cli, cache_project, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    result = cli("-C", str(cache_project.root), "cache", "build", "--size", "16", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    assert cache_project.store().provenance("cache/train")["complete"]


def test_build_needs_extracted_features(cli, tmp_path) -> None:
    from grappa_cli.stages.init import create_project

    project = create_project(tmp_path / "bare")
    result = cli("-C", str(project.root), "cache", "build", "--yes")
    assert result.exit_code == 1
    assert "features/train" in result.stderr and "grappa extract" in result.stderr
    store = project.store()
    store.begin("features/train", "extract", {}, {})  # interrupted extraction: incomplete
    result = cli("-C", str(project.root), "cache", "build", "--yes")
    assert result.exit_code == 1 and "incomplete" in result.stderr and "grappa extract" in result.stderr


def test_size_must_be_given_when_features_do_not_record_it(cli, tmp_path, cache_images) -> None:
    from grappa_cli.stages.init import create_project

    project = create_project(tmp_path / "p")
    write_features_train(project.store(), cache_images, data_config=None)
    result = cli("-C", str(project.root), "cache", "build", "--yes")
    assert result.exit_code == 2 and "--size" in result.stderr
    ok = cli("-C", str(project.root), "cache", "build", "--yes", "--size", "12", "--workers", "0")
    assert ok.exit_code == 0, ok.stderr
    assert np.asarray(project.store().read("cache/train/images")).shape[1:] == (12, 12, 3)


def test_clear_unknown_name_and_empty(cli, cache_project) -> None:
    empty = cli("-C", str(cache_project.root), "cache", "clear", "--yes")
    assert empty.exit_code == 0 and "No image cache" in empty.stdout
    built = cli("-C", str(cache_project.root), "cache", "build", "--yes", "--size", "12", "--workers", "0")
    assert built.exit_code == 0
    unknown = cli("-C", str(cache_project.root), "cache", "clear", "nope", "--yes")
    assert unknown.exit_code == 2 and "nope" in unknown.stderr and "train" in unknown.stderr


def test_training_stages_find_the_current_cache(cli, cache_project, cache_images) -> None:
    from grappa_cli.errors import StoreError
    from grappa_cli.stages.cache import require_training_cache

    store = cache_project.store()
    with pytest.raises(StoreError, match="grappa cache build"):
        require_training_cache(store)
    assert cli("-C", str(cache_project.root), "cache", "build", "--yes", "--workers", "0").exit_code == 0
    assert require_training_cache(store) == "cache/train"
    write_features_train(store, cache_images[1:])  # extraction redone on another image list
    with pytest.raises(StoreError, match="--force"):
        require_training_cache(store)
