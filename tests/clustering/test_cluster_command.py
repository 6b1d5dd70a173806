"""``grappa cluster`` end to end on real zarr stores inside real projects."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cluster_data import planted_blobs, write_features

from grappa_cli.clustering.vectors import l2_normalize
from grappa_cli.pipeline.stages import cluster as stage
from grappa_cli.records import artifacts

N = 400


def read_set(project, k: int) -> dict:
    store = project.store(mode="r")
    key = f"clusters/k{k}"
    return {
        "centroids": store.read(f"{key}/centroids"),
        "labels": store.read(f"{key}/labels"),
        "sizes": store.read(f"{key}/sizes"),
        "record": store.provenance(key),
    }


def test_cluster_writes_every_k_and_prints_a_table(cli, feature_project):
    result = cli("cluster", "--k", "8,4,32", "-C", feature_project.root)
    assert result.exit_code == 0, result.stderr
    for column in ("k", "status", "empty", "size min/median/max", "inertia", "iters", "seconds"):
        assert column in result.stdout
    feats = feature_project.store(mode="r").read("features/train/embeddings")
    x = l2_normalize(feats)
    features_fp = feature_project.store(mode="r").provenance("features/train")["fingerprint"]
    for k in (4, 8, 32):
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"│ {k:>2} │"))
        data = read_set(feature_project, k)
        c, labels, sizes, rec = data["centroids"], data["labels"], data["sizes"], data["record"]
        assert c.shape == (k, 16) and c.dtype == np.float32
        assert labels.shape == (N,) and labels.dtype == np.int32
        assert sizes.dtype == np.int64
        np.testing.assert_array_equal(sizes, np.bincount(labels, minlength=k))
        # labels are the nearest centroid of the L2-normalised float32 features
        d2 = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(axis=2)
        np.testing.assert_allclose(d2[np.arange(N), labels], d2.min(axis=1), rtol=1e-5, atol=1e-6)
        assert rec["complete"] is True and rec["stage"] == "cluster"
        assert rec["inputs"] == {"features/train": features_fp}
        params = rec["params"]
        assert (params["k"], params["backend"], params["seed"], params["niter"]) == (k, "faiss", 0, 10)
        assert params["normalize"] == "l2"
        assert params["init"] == "greedy-k-means++" and "subsample" in params
        assert rec["inertia"] == pytest.approx(d2.min(axis=1).sum(), rel=1e-6)
        assert rec["empty_clusters"] == int((sizes == 0).sum())
        assert rec["summary"] == {"k": k, "empty": int((sizes == 0).sum()), "min": int(sizes.min()),
                                  "median": float(np.median(sizes)), "max": int(sizes.max())}
        assert rec["info"]["max_points_per_centroid"] >= N / k
        assert rec["iterations"] >= 1 and rec["seconds"] >= 0
        assert artifacts.stale_inputs(feature_project, rec) == []
        cells = [cell.strip() for cell in row.strip("│").split("│")]
        assert cells[:4] == [str(k), "clustered", str(rec["empty_clusters"]),
                             f"{sizes.min()}/{np.median(sizes):g}/{sizes.max()}"]
        assert float(cells[4]) == pytest.approx(rec["inertia"], rel=1e-5)
    # k = 8 on 8 planted blobs recovers them
    _, truth = planted_blobs()
    labels8 = read_set(feature_project, 8)["labels"]
    assert len(set(zip(labels8.tolist(), truth.tolist(), strict=True))) == 8


def test_rerun_skips_and_force_redoes(cli, feature_project):
    root = feature_project.root
    assert cli("cluster", "--k", "4,8", "-C", root).exit_code == 0
    first = read_set(feature_project, 8)["record"]

    again = cli("cluster", "--k", "4,8", "--json", "-C", root)
    assert again.exit_code == 0, again.stderr
    doc = json.loads(again.stdout)
    assert [c["status"] for c in doc["clusters"]] == ["skipped", "skipped"]
    assert doc["clusters"][1]["inertia"] == pytest.approx(first["inertia"])
    assert read_set(feature_project, 8)["record"]["created"] == first["created"]
    assert "skipped" in again.stderr

    forced = cli("cluster", "--k", "8", "--force", "--json", "-C", root)
    assert forced.exit_code == 0, forced.stderr
    assert json.loads(forced.stdout)["clusters"][0]["status"] == "clustered"
    redone = read_set(feature_project, 8)
    assert redone["record"]["complete"] is True
    assert redone["record"]["inertia"] == pytest.approx(first["inertia"], rel=1e-9)  # same seed, same result


def test_other_settings_are_refused_until_forced(cli, feature_project):
    root = feature_project.root
    assert cli("cluster", "--k", "8", "-C", root).exit_code == 0
    before = read_set(feature_project, 8)

    result = cli("cluster", "--k", "8", "--seed", "3", "-C", root)
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "clusters/k8" in message and "seed (0 -> 3)" in message and "--force" in message
    assert len(message.splitlines()) == 1
    after = read_set(feature_project, 8)
    assert after["record"] == before["record"]
    np.testing.assert_array_equal(after["labels"], before["labels"])

    forced = cli("cluster", "--k", "8", "--seed", "3", "--force", "-C", root)
    assert forced.exit_code == 0, forced.stderr
    assert read_set(feature_project, 8)["record"]["params"]["seed"] == 3


def test_changed_features_make_sets_stale(cli, feature_project):
    root = feature_project.root
    assert cli("cluster", "--k", "8", "-C", root).exit_code == 0
    x, _ = planted_blobs(seed=9)
    write_features(feature_project, x, tag="v2")

    status = cli("status", "--json", "-C", root)
    entry = next(a for a in json.loads(status.stdout)["artifacts"] if a["id"] == "clusters/k8")
    assert entry["state"] == "stale" and entry["stale_inputs"] == ["features/train"]

    refused = cli("cluster", "--k", "8", "-C", root)
    assert refused.exit_code == 1
    assert "input features/train" in refused.stderr and "--force" in refused.stderr

    assert cli("cluster", "--k", "8", "--force", "-C", root).exit_code == 0
    status = cli("status", "--json", "-C", root)
    entry = next(a for a in json.loads(status.stdout)["artifacts"] if a["id"] == "clusters/k8")
    assert entry["state"] == "complete"
    assert "k=8" in entry["detail"] and "empty=" in entry["detail"]


def test_interrupted_set_is_redone_without_force(cli, feature_project):
    store = feature_project.store()
    fp = store.provenance("features/train")["fingerprint"]
    store.begin("clusters/k8", "cluster", {"k": 8, "seed": 99}, {"features/train": fp})  # never finished
    result = cli("cluster", "--k", "8", "--json", "-C", feature_project.root)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["clusters"][0]["status"] == "clustered"
    assert read_set(feature_project, 8)["record"]["complete"] is True


def test_rows_of_unreadable_images_get_no_label(cli, empty_project):
    x, truth = planted_blobs()
    valid = np.ones(N, dtype=bool)
    valid[[3, 50, 399]] = False
    x[~valid] = 0.0  # what extract leaves in rows it could not fill
    write_features(empty_project, x, valid=valid)
    result = cli("cluster", "--k", "8", "--json", "-C", empty_project.root)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["n"], doc["unreadable"]) == (N - 3, 3)
    data = read_set(empty_project, 8)
    assert data["labels"].shape == (N,)
    assert np.all(data["labels"][~valid] == -1) and np.all(data["labels"][valid] >= 0)
    assert data["sizes"].sum() == N - 3
    assert data["record"]["n"] == N - 3 and data["record"]["unlabeled_rows"] == 3
    pairs = set(zip(data["labels"][valid].tolist(), truth[valid].tolist(), strict=True))
    assert len(pairs) == 8
    # k is checked against the usable images: 397 of them
    refused = cli("cluster", "--k", "397", "-C", empty_project.root)
    assert refused.exit_code == 2 and "(397)" in refused.stderr


def test_no_readable_training_image_is_an_error(cli, empty_project):
    x, _ = planted_blobs()
    write_features(empty_project, x, valid=np.zeros(N, dtype=bool))
    result = cli("cluster", "--k", "8", "-C", empty_project.root)
    assert result.exit_code == 1 and "none of the training images could be read" in result.stderr


def test_without_features_the_message_says_run_extract(cli, empty_project):
    result = cli("cluster", "--k", "8", "-C", empty_project.root)
    assert result.exit_code == 1
    assert "no extracted features yet" in result.stderr and "grappa extract" in result.stderr
    assert empty_project.store(mode="r").children("clusters") == []


def test_incomplete_features_are_not_used(cli, empty_project):
    x, _ = planted_blobs()
    write_features(empty_project, x, complete=False)
    result = cli("cluster", "--k", "8", "-C", empty_project.root)
    assert result.exit_code == 1
    assert "grappa extract" in result.stderr


def test_nan_features_are_refused_and_nothing_is_written(cli, empty_project):
    x, _ = planted_blobs()
    x[17, 3] = np.nan
    write_features(empty_project, x)
    result = cli("cluster", "--k", "4,8", "-C", empty_project.root)
    assert result.exit_code == 1
    assert "NaN or infinite" in result.stderr and "row 17" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    store = empty_project.store(mode="r")
    assert not store.exists("clusters/k4") and not store.exists("clusters/k8")


def test_k_not_below_n_is_refused_and_nothing_is_written(cli, feature_project):
    result = cli("cluster", "--k", "8,400", "-C", feature_project.root)
    assert result.exit_code == 2
    assert "k=400 is not smaller than the number of training images (400)" in result.stderr
    assert feature_project.store(mode="r").children("clusters") == []


def test_bad_k_syntax_is_a_usage_error(cli, feature_project):
    result = cli("cluster", "--k", "8,eight", "-C", feature_project.root)
    assert result.exit_code == 2
    assert "'eight'" in result.stderr


def test_unknown_backend_suggests_the_closest(cli, feature_project):
    result = cli("cluster", "--k", "8", "--backend", "fais", "-C", feature_project.root)
    assert result.exit_code == 1
    assert "unknown clusterer 'fais'" in result.stderr
    assert "did you mean 'faiss'" in result.stderr
    assert "minibatch" in result.stderr and "sklearn" in result.stderr
    assert feature_project.store(mode="r").children("clusters") == []


def test_defaults_come_from_the_config(cli, feature_project):
    # grappa.toml of the fixture: [cluster] k = [4, 8], niter = 10
    result = cli("cluster", "--json", "-C", feature_project.root)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [c["k"] for c in doc["clusters"]] == [4, 8]
    assert (doc["backend"], doc["niter"], doc["n"], doc["dim"]) == ("faiss", 10, N, 16)


def test_auto_in_the_config_uses_the_ladder(cli, feature_project):
    import tomlkit

    doc = tomlkit.parse(feature_project.config_path.read_text())
    doc["cluster"]["k"] = "auto"
    doc["cluster"]["auto_count"] = 3
    doc["cluster"]["backend"] = "sklearn"
    feature_project.config_path.write_text(tomlkit.dumps(doc))
    result = cli("cluster", "--json", "-C", feature_project.root)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["backend"] == "sklearn"
    # n = 400: powers of two from round(log2(400/512)) -> 2, raised to auto_min_k = 16 (2^4), up to
    # floor(log2(200)) -> 128: exponents 4, 5.5, 7 rounded
    assert [c["k"] for c in out["clusters"]] == [16, 64, 128]
    assert feature_project.store(mode="r").children("clusters") == ["k128", "k16", "k64"]


def test_other_backends_through_the_cli(cli, feature_project):
    for backend in ("sklearn", "minibatch"):
        result = cli("cluster", "--k", "8", "--backend", backend, "--force", "--json",
                     "-C", feature_project.root)
        assert result.exit_code == 0, result.stderr
        assert read_set(feature_project, 8)["record"]["params"]["backend"] == backend


def test_the_command_holds_the_project_lock(cli, feature_project):
    with feature_project.lock("adapt"):
        result = cli("cluster", "--k", "8", "-C", feature_project.root)
    assert result.exit_code == 1
    assert "locked" in result.stderr and "grappa adapt" in result.stderr


def test_the_stage_returns_data_and_prints_nothing(feature_project, capsys):
    report = stage.run(feature_project, k=[4], niter=3)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert report.outcomes[0].k == 4 and report.outcomes[0].status == "clustered"
    assert report.to_dict()["clusters"][0]["k"] == 4


def test_listing_clusterers_imports_no_heavy_library():
    import os
    import subprocess
    import sys

    code = ("import sys; from grappa_cli import plugins; from grappa_cli.cli.app import register_all; "
            "register_all(); names = plugins.registry('clusterers').names(); "
            "print(names, [m for m in ('faiss', 'sklearn', 'torch', 'zarr') if m in sys.modules])")
    env = {**os.environ, "GRAPPA_LOAD_PLUGINS": ""}  # the built-ins alone
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env).stdout
    assert "'faiss'" in out and "'minibatch'" in out and out.strip().endswith("[]")
