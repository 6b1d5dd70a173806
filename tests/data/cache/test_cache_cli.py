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
    from grappa_cli.setup.init import create_project

    project = create_project(tmp_path / "bare")
    result = cli("-C", str(project.root), "cache", "build", "--yes")
    assert result.exit_code == 1
    assert "features/train" in result.stderr and "grappa extract" in result.stderr
    store = project.store()
    store.begin("features/train", "extract", {}, {})  # interrupted extraction: incomplete
    result = cli("-C", str(project.root), "cache", "build", "--yes")
    assert result.exit_code == 1 and "incomplete" in result.stderr and "grappa extract" in result.stderr


def test_size_must_be_given_when_features_do_not_record_it(cli, tmp_path, cache_images) -> None:
    from grappa_cli.setup.init import create_project

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
    from grappa_cli.pipeline.stages.cache import require_training_cache

    store = cache_project.store()
    with pytest.raises(StoreError, match="grappa cache build"):
        require_training_cache(store)
    assert cli("-C", str(cache_project.root), "cache", "build", "--yes", "--workers", "0").exit_code == 0
    assert require_training_cache(store) == "cache/train"
    write_features_train(store, cache_images[1:])  # extraction redone on another image list
    with pytest.raises(StoreError, match="--force"):
        require_training_cache(store)


def _pixels_by_training_row(store) -> tuple[dict[int, bytes], dict[int, bool]]:
    rows = np.asarray(store.read("cache/train/rows"))
    images = np.asarray(store.read("cache/train/images"))
    valid = np.asarray(store.read("cache/train/valid"))
    return ({int(r): images[i].tobytes() for i, r in enumerate(rows)},
            {int(r): bool(valid[i]) for i, r in enumerate(rows)})


def test_a_cache_grows_by_the_images_an_update_appends(cli, cache_project, cache_images, tmp_path) -> None:
    """An incremental update appends images to the training set: only those (and the shard they join) are
    decoded, and every training row then holds the pixels a fresh build would hold."""
    from grappa_cli.errors import StoreError
    from grappa_cli.pipeline.stages import cache as stage
    from grappa_cli.setup.init import create_project

    store = cache_project.store()
    old = len(cache_images) - 5  # 19 images, shards of 4 rows: the 5th shard holds 3 old rows
    write_features_train(store, cache_images[:old])
    options = stage.CacheOptions(chunk_rows=4, num_workers=0)
    first = stage.build(cache_project, stage.plan(cache_project, options), options)
    assert first.built == old
    kept = np.asarray(store.read("cache/train/images"))[:16].tobytes()  # the 4 full shards

    write_features_train(store, cache_images)  # the update appended 5 images
    with pytest.raises(StoreError, match="5 added since") as raised:
        stage.require_training_cache(store)
    assert "grappa cache build" in raised.value.hint and "--force" not in raised.value.hint
    (entry,) = stage.info(cache_project)
    assert not entry.stale and entry.grows_by == 5 and entry.images == old

    plan = stage.plan(cache_project, options)
    assert (plan.state, plan.grown_from, plan.to_decode) == ("grow", old, 5)
    grown = stage.build(cache_project, plan, options)
    assert grown.built == 8  # the shard of rows 16-19 (3 old rows, 1 new) and the new one of rows 20-23
    assert stage.require_training_cache(store) == "cache/train"
    record = store.provenance("cache/train")
    assert record["complete"] and record["grown"] == [old] and record["images"] == len(cache_images)
    assert np.asarray(store.read("cache/train/images"))[:16].tobytes() == kept
    rows = np.asarray(store.read("cache/train/rows"))
    assert sorted(rows.tolist()) == list(range(len(cache_images))) and set(rows[old:].tolist()) == set(
        range(old, len(cache_images)))

    fresh = create_project(tmp_path / "fresh")
    write_features_train(fresh.store(), cache_images)
    stage.build(fresh, stage.plan(fresh, options), options)
    assert _pixels_by_training_row(store) == _pixels_by_training_row(fresh.store())
    assert stage.plan(cache_project, options).state == "complete"


def test_a_growth_interrupted_before_its_images_are_decoded_resumes(cache_project, cache_images, tmp_path) -> None:
    from grappa_cli.pipeline.stages import cache as stage
    from grappa_cli.setup.init import create_project

    store = cache_project.store()
    old = len(cache_images) - 5
    write_features_train(store, cache_images[:old])
    options = stage.CacheOptions(chunk_rows=4, num_workers=0)
    stage.build(cache_project, stage.plan(cache_project, options), options)
    write_features_train(store, cache_images)
    plan = stage.plan(cache_project, options)
    # the arrays grow, then the process dies before any shard is filled
    image_cache.prepare_cache(store, "train", plan.paths, size=plan.size, inputs=plan.inputs, chunk_rows=4,
                              grown_from=old)
    assert not store.provenance("cache/train")["complete"]
    with pytest.raises(Exception, match="cache"):
        stage.require_training_cache(store)  # never read half-grown
    resumed = stage.plan(cache_project, options)
    assert resumed.state == "partial"
    assert stage.build(cache_project, resumed, options).built == 8
    fresh = create_project(tmp_path / "fresh")
    write_features_train(fresh.store(), cache_images)
    stage.build(fresh, stage.plan(fresh, options), options)
    assert _pixels_by_training_row(store) == _pixels_by_training_row(fresh.store())
