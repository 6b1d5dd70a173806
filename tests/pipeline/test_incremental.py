"""Adding a domain incrementally: new images only, old sets untouched, fusion retrained, all tasks scored.

A tiny project trains on one image folder (``shapes``); a second folder (``stripes``) is then
added to the training set and the evaluated tasks, and ``grappa run`` updates the project.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.conftest import trained_on_one_domain


def _add_stripes(project, root: Path) -> None:
    from grappa_cli.setup.tasks import add_task

    add_task(project, "stripes", root, train=True)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _arrays(project, group: str) -> dict[str, bytes]:
    store = project.store(mode="r")
    return {name: np.asarray(store.read(f"{group}/{name}")).tobytes() for name in ("centroids", "labels", "sizes")}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A project trained on ``shapes`` alone, and the ``stripes`` folder to add."""
    return trained_on_one_domain(tmp_path_factory.mktemp("incremental"))


def _copy(base, tmp_path):
    from grappa_cli.project import Project

    project, stripes = base
    shutil.copytree(project.root, tmp_path / "project")
    return Project(tmp_path / "project"), stripes


def test_status_announces_the_incremental_update(base, tmp_path) -> None:
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.status import collect

    project, stripes = _copy(base, tmp_path)
    _add_stripes(project, stripes)
    plan = planner.build(project)
    todo = {node.id for node in plan.todo()}
    assert "features/train" in todo and "features/test/stripes" in todo
    assert {"clusters/k2-stripes", "adaptors/k2-stripes", "adaptors/k3-stripes"} <= todo
    assert not {"clusters/k2", "adaptors/k2", "results/adaptor-k2/shapes", "results/backbone/shapes"} & todo
    assert {"fusion/avg", "fusion/neighbor", "results/fused-neighbor/shapes"} <= todo
    assert "grows by" in plan.get("features/train").reason
    lines = collect(project).update
    assert any("extract" in line and "stripes" in line for line in lines)
    assert any("k2-stripes, k3-stripes" in line for line in lines)
    assert any("keep 1 adaptor sets untouched: k2" in line for line in lines)
    assert any("also on 1x as many earlier training images" in line for line in lines)
    assert any("current fused models' Q and K" in line and "warm_scale" in line for line in lines)


def test_update_extracts_only_new_images_and_keeps_old_artifacts(base, tmp_path) -> None:
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.records import artifacts

    project, stripes = _copy(base, tmp_path)
    store = project.store(mode="r")
    old_rows = np.asarray(store.read("features/train/embeddings"))
    old_valid = np.asarray(store.read("features/train/valid"))
    old_paths = [str(p) for p in store.read("features/train/paths")]
    old_fp = store.provenance("features/train")["fingerprint"]
    adaptor = project.adaptors_dir / "k2.safetensors"
    adaptor_digest, clusters = _digest(adaptor), _arrays(project, "clusters/k2")
    backbone_result = _digest(project.results_dir / "backbone" / "shapes.json")
    old_neighbor = artifacts.record(project, "fusion/neighbor")

    _add_stripes(project, stripes)
    announced = {node.id for node in planner.build(project).todo()}
    outcome = run_pipeline(project)
    done = {s.stage: s.done for s in outcome.stages}
    assert set(outcome.planned) == announced
    assert done["extract"] == ["features/train", "features/test/stripes"]
    assert done["cluster"] == ["k2-stripes", "k3-stripes"]
    assert done["adapt"] == ["k2-stripes", "k3-stripes"]
    assert sorted(done["fuse"]) == ["avg", "neighbor"]

    store = project.store(mode="r")
    rows = np.asarray(store.read("features/train/embeddings"))
    n0 = len(old_rows)
    assert len(rows) == n0 + 5
    assert rows[:n0].tobytes() == old_rows.tobytes()  # the old rows, bit for bit
    assert np.asarray(store.read("features/train/valid"))[:n0].tolist() == old_valid.tolist()
    assert [str(p) for p in store.read("features/train/paths")][:n0] == old_paths
    assert all("stripes" in str(p) for p in store.read("features/train/paths")[n0:])
    record = store.provenance("features/train")
    assert record["complete"] and not record.get("growing")
    assert [inc["stop"] for inc in record["increments"]] == [n0, n0 + 5]
    assert record["increments"][0]["fingerprint"] == old_fp
    assert record["increments"][1]["parts"] == ["stripes"]

    # old pseudo-labels and adaptor set untouched, still current; the new sets saw the new rows only
    assert _digest(adaptor) == adaptor_digest and _arrays(project, "clusters/k2") == clusters
    assert _digest(project.results_dir / "backbone" / "shapes.json") == backbone_result
    new_labels = np.asarray(store.read("clusters/k2-stripes/labels"))
    assert (new_labels[:n0] == -1).all() and (new_labels[n0:] >= 0).all()
    assert store.provenance("clusters/k2-stripes")["trained_on"]["rows"] == [n0, n0 + 5]
    assert artifacts.record(project, "adaptors/k3-stripes")["trained_on"]["parts"] == ["stripes"]
    neighbor = artifacts.record(project, "fusion/neighbor")
    assert neighbor["params"]["sets"] == ["k2", "k2-stripes", "k3-stripes"]
    assert neighbor["warm_start"] == {"from": old_neighbor["fingerprint"], "sets": ["k2"], "steps": 0.4,
                                      "scale": "reset"}
    assert artifacts.record(project, "fusion/avg")["warm_start"] is None  # no attention to start from
    for model in ("backbone", "adaptor-k2", "adaptor-k2-stripes", "fused-avg", "fused-neighbor"):
        assert (project.results_dir / model / "stripes.json").is_file()
    assert not run_pipeline(project).changed
    assert not planner.build(project).todo()


def test_warm_start_starts_the_fusion_at_the_previous_attention(base, tmp_path) -> None:
    """With the previous Q, K and logit scales, step 0 of the new fusion holds the old layers' values."""
    from grappa_cli import plugins
    from grappa_cli.config import update_file
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.model.checkpoint import load_fusion
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.pipeline.stages.fuse import warm_start_source
    from grappa_cli.records import artifacts

    project, _ = _copy(base, tmp_path)
    config = project.config()
    backbone = build_backbone(backbone_spec(config))
    strategy = plugins.get("fusion_strategies", "neighbor")
    existing = artifacts.record(project, "fusion/neighbor")
    warm = warm_start_source(project, config, strategy, ["k2", "k2-stripes"], existing, backbone)
    assert warm is not None and warm.set_names == ["k2"]
    stored = load_fusion(project.fusion_dir / "neighbor.safetensors", backbone)
    for got, want in zip(warm.layers, stored.layers, strict=True):
        for (name, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items(), strict=True):
            assert a.equal(b), name
    assert warm_start_source(project, config, strategy, ["k2"], existing, backbone) is None  # no set added
    update_file(project.config_path, lambda doc: doc["fuse"].__setitem__("warm_start", False))
    assert warm_start_source(project, project.config(), strategy, ["k2", "k2-stripes"], existing, backbone) is None


@pytest.mark.parametrize("scale", ["reset", "keep"])
def test_a_warm_fusion_keeps_q_and_k_and_resets_or_keeps_the_logit_scales(base, tmp_path, scale) -> None:
    """``reset``: step 0 weighs the old and added sets equally (entropy 1, scales 0) with the previous
    Q and K; ``keep``: step 0 is the previous attention, scales included."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from grappa_cli.config import update_file
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.records import artifacts

    project, stripes = _copy(base, tmp_path)
    # the tiny fusion barely trains: give its layers the sharp attention a real one ends with
    path = project.fusion_dir / "neighbor.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    for key in [k for k in tensors if k.endswith("logit_scale")]:
        tensors[key] = tensors[key].clone().fill_(1.5)
    save_file(tensors, str(path), metadata=metadata)
    before = {"q_norm": float(np.mean([tensors[k].norm() for k in tensors if k.endswith("query.weight")])),
              "k_norm": float(np.mean([tensors[k].norm() for k in tensors if k.endswith("key.weight")])),
              "logit_scale": 1.5}
    update_file(project.config_path, lambda doc: doc["fuse"].__setitem__("warm_scale", scale))
    _add_stripes(project, stripes)
    run_pipeline(project)
    record = artifacts.record(project, "fusion/neighbor")
    start = record["attention"][0]
    assert record["warm_start"]["scale"] == scale and start["epoch"] == 0
    assert start["q_norm"] == pytest.approx(before["q_norm"], rel=1e-6)
    assert start["k_norm"] == pytest.approx(before["k_norm"], rel=1e-6)
    if scale == "reset":
        assert start["logit_scale"] == 0.0
        assert start["entropy"] == pytest.approx(1.0, abs=1e-6)
        assert start["mean_alpha"] == pytest.approx([1 / 3] * 3, abs=1e-6)
    else:
        assert start["logit_scale"] == pytest.approx(before["logit_scale"], rel=1e-6)


def test_full_rebuild_redoes_everything_on_the_union(base, tmp_path) -> None:
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.run import run_pipeline

    project, stripes = _copy(base, tmp_path)
    _add_stripes(project, stripes)
    run_pipeline(project)
    incremental = np.asarray(project.store(mode="r").read("features/train/embeddings"), dtype=np.float32)
    full_plan = {node.id for node in planner.build(project, full=True).todo()}
    assert {"features/train", "clusters/k2", "adaptors/k2", "fusion/neighbor"} <= full_plan
    outcome = run_pipeline(project, full=True)
    assert set(outcome.planned) == full_plan
    store = project.store(mode="r")
    record = store.provenance("features/train")
    assert len(record["increments"]) == 1
    n = int(record["images"])
    assert store.provenance("clusters/k2")["trained_on"]["rows"] == [0, n]
    rebuilt = np.asarray(store.read("features/train/embeddings"), dtype=np.float32)
    np.testing.assert_allclose(rebuilt, incremental, atol=2e-3)  # same images, same model (float16 storage)
    plan = planner.build(project)
    assert not plan.todo()
    assert not plan.get("adaptors/k2-stripes").configured  # the added images' sets are no longer asked for


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_an_interrupted_update_resumes_to_the_same_result(base, tmp_path, fraction) -> None:
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.storage import faults

    reference, stripes = _copy(base, tmp_path / "reference")
    _add_stripes(reference, stripes)
    writes: list[str] = []
    with faults.arm(None, record=writes):
        run_pipeline(reference)
    at = max(1, int(len(writes) * fraction))

    project, _ = _copy(base, tmp_path / "faulted")
    _add_stripes(project, stripes)
    with faults.arm(at, "interrupt") as plan, pytest.raises(KeyboardInterrupt):
        run_pipeline(project)
    assert plan.fired
    announced = {node.id for node in planner.build(project).todo()}
    outcome = run_pipeline(project)
    assert set(outcome.planned) == announced
    for group in ("features/train", "clusters/k2-stripes", "clusters/k3-stripes"):
        for name in ("embeddings", "valid", "paths", "labels", "centroids"):
            key = f"{group}/{name}"
            if reference.store(mode="r").exists(key):
                got = np.asarray(project.store(mode="r").read(key))
                want = np.asarray(reference.store(mode="r").read(key))
                assert got.dtype == want.dtype and got.shape == want.shape, f"{key} after write {at}"
                assert got.tolist() == want.tolist(), f"{key} after write {at}"
    for path in sorted(reference.checkpoints.glob("*/*.safetensors")):
        from safetensors.numpy import load_file

        got = load_file(str(project.checkpoints / path.parent.name / path.name))
        want = load_file(str(path))
        assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in want.items()}, path.name
    assert not run_pipeline(project).changed


def test_the_commands_show_and_run_the_update(base, tmp_path, cli) -> None:
    """`task add --train`, `status` (the update block), `run`, then `run --full` from the command line."""
    import json

    project, stripes = _copy(base, tmp_path)
    added = cli("task", "add", "stripes", stripes, "--train", "-C", project.root)
    assert added.exit_code == 0, added.stderr
    shown = cli("status", "-C", project.root)
    assert shown.exit_code == 0, shown.stderr
    assert "Incremental update (data.train grew):" in shown.stdout
    assert "k2-stripes, k3-stripes" in shown.stdout and "--full" in shown.stdout
    ran = cli("run", "--json", "-C", project.root)
    assert ran.exit_code == 0, ran.stderr
    assert "Estimated time: about " in ran.stderr  # announced from the rates of the first run
    stages = {s["stage"]: s["done"] for s in json.loads(ran.stdout)["stages"]}
    assert stages["adapt"] == ["k2-stripes", "k3-stripes"]
    after = json.loads(cli("status", "--json", "-C", project.root).stdout)
    assert after["update"] == [] and after["next"] == []
    full = cli("run", "--full", "--json", "-C", project.root)
    assert full.exit_code == 0, full.stderr
    stages = {s["stage"]: s["done"] for s in json.loads(full.stdout)["stages"]}
    assert stages["extract"] == ["features/train"] and stages["adapt"] == ["k2"]


def test_the_update_grows_the_image_cache_and_trains_from_it(base, tmp_path) -> None:
    """A project that trains from its image cache keeps doing so after an update: `grappa run` decodes only the
    added images into the cache before the new sets train."""
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.pipeline.stages import cache as cache_stage
    from grappa_cli.pipeline.status import collect
    from grappa_cli.records import artifacts

    project, stripes = _copy(base, tmp_path)
    options = cache_stage.CacheOptions(num_workers=0)
    cache_stage.build(project, cache_stage.plan(project, options), options)
    n0 = project.store(mode="r").provenance("cache/train")["images"]
    _add_stripes(project, stripes)
    assert f"decode them into the image cache (cache/train keeps its {n0} images)" in collect(project).update
    outcome = run_pipeline(project)
    done = {s.stage: s.done for s in outcome.stages}
    assert done["extract"] == ["features/train", "features/test/stripes", "cache/train"]
    store = project.store(mode="r")
    assert cache_stage.require_training_cache(store) == "cache/train"
    record = store.provenance("cache/train")
    assert record["grown"] == [n0] and record["images"] == n0 + 5
    for artifact in ("adaptors/k2-stripes", "adaptors/k3-stripes", "fusion/neighbor"):
        assert artifacts.record(project, artifact)["input"] == "cache"
    assert not run_pipeline(project).changed


def test_added_sets_also_learn_replayed_images_of_the_earlier_domain(base, tmp_path) -> None:
    """Each added set classifies its own clusters and, for as many old images as it has new ones,
    the clusters of the old increment's set nearest in k; ``replay = 0`` trains on the new images alone."""
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.pipeline.stages import replay
    from grappa_cli.pipeline.stages.adapt import training_labels
    from grappa_cli.records import artifacts, increments

    project, stripes = _copy(base, tmp_path)
    _add_stripes(project, stripes)
    run_pipeline(project)
    store = project.store(mode="r")
    config = project.config()
    assert config.adapt.replay == 1.0
    assert replay.sources(config, store, "k3-stripes") == ["k2"] and replay.sources(config, store, "k2") == []

    new, new_keep = training_labels(store, "k3-stripes")
    old, old_keep = training_labels(store, "k2")
    added = int(new_keep.sum())
    labels, keep, replayed = replay.labelled_rows(store, "k3-stripes", ["k2"], 1.0, seed=0)
    assert added == 5 and replayed == 5 and int(keep.sum()) == 10
    assert (labels[new_keep] == new[new_keep]).all()  # the added images keep their own clusters 0..2
    replayed_rows = keep & ~new_keep
    assert (old_keep[replayed_rows]).all()  # only earlier images that the old clustering labels
    assert (labels[replayed_rows] == old[replayed_rows] + 3).all()  # shifted past the set's own 3 classes
    assert replay.classes("k3-stripes", ["k2"]) == 5
    again = replay.labelled_rows(store, "k3-stripes", ["k2"], 1.0, seed=0)
    assert (again[0] == labels).all() and (again[1] == keep).all()  # the seed decides the draw
    alone = replay.labelled_rows(store, "k3-stripes", ["k2"], 0.0, seed=0)
    assert (alone[1] == new_keep).all() and alone[2] == 0

    record = artifacts.record(project, "adaptors/k3-stripes")
    assert record["params"]["replay"] == 1.0
    assert record["trained_on"]["replayed"] == {"clusterings": ["k2"], "images": 5}
    assert record["trained_on"]["parts"] == ["stripes"]
    assert record["images"] == 10
    assert record["inputs"]["clusters/k2"] == store.provenance("clusters/k2")["fingerprint"]
    assert "replay" not in artifacts.record(project, "adaptors/k2")["params"]

    # the planner predicts the same fingerprints; turning replay off makes the added sets (only) stale
    assert not planner.build(project).todo()
    from grappa_cli.config import update_file

    update_file(project.config_path, lambda doc: doc["adapt"].__setitem__("replay", 0.0))
    stale = {node.id for node in planner.build(project).todo() if node.stage == "adapt"}
    assert stale == {"adaptors/k2-stripes", "adaptors/k3-stripes"}
    run_pipeline(project)
    assert "replayed" not in artifacts.record(project, "adaptors/k3-stripes")["trained_on"]
    assert artifacts.record(project, "adaptors/k3-stripes")["images"] == added
    assert increments.replay_sources(increments.configured(project.config(), store), "k3-stripes") == ["k2"]


def test_an_added_set_refuses_to_replay_a_missing_clustering(base, tmp_path) -> None:
    from grappa_cli.errors import StoreError
    from grappa_cli.pipeline.stages.adapt import AdaptOptions, adapt
    from grappa_cli.pipeline.stages.cluster import run as cluster
    from grappa_cli.pipeline.stages.extract import ExtractOptions, extract

    project, stripes = _copy(base, tmp_path)
    _add_stripes(project, stripes)
    extract(project, ExtractOptions(splits=("train",), refresh=True))
    cluster(project, refresh=True)
    project.store().delete("clusters/k2")
    with pytest.raises(StoreError, match=r"k2-stripes replays them.*does not exist yet"):
        adapt(project, AdaptOptions(sets=["k2-stripes"]))
    assert not (project.adaptors_dir / "k2-stripes.safetensors").exists()


def test_replay_sources_pick_each_earlier_increments_set_nearest_in_k() -> None:
    from grappa_cli.records.increments import Increment, IncrementSets, replay_sources

    first = IncrementSets(Increment(0, 0, 1000), [16, 64, 256], None, 1000)
    coral = IncrementSets(Increment(1, 1000, 1100, ["coral"]), [16, 32], None, 100)
    moths = IncrementSets(Increment(2, 1100, 1150, ["moths"]), [8], None, 50)
    sets = [first, coral, moths]
    assert replay_sources(sets, "k16-coral") == ["k16"]
    assert replay_sources(sets, "k32-coral") == ["k16"]  # 32 is as far from 16 as from 64: the smaller
    assert replay_sources(sets, "k8-moths") == ["k16", "k16-coral"]
    assert replay_sources(sets, "k256") == [] and replay_sources(sets, "k4-other") == []

