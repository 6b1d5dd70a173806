"""`grappa index` and `grappa search` on a tiny fused project."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grappa_cli.serving.gallery import gallery_key, read_sidecar
from tests.conftest import copy_project, make_image_folder, rewrite_adaptor_weights, run_subprocess
from tests.conftest import make_tiny_project as write_tiny_project


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, gallery_images) -> Path:
    """The project's 24 images, a corrupt JPEG, a truncated PNG and a text file in nested folders."""
    root = tmp_path_factory.mktemp("gallery") / "photos"
    shutil.copytree(gallery_images, root / "shapes")
    (root / "broken").mkdir()
    (root / "broken" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    data = (gallery_images / "class_000" / "img_000.png").read_bytes()
    (root / "broken" / "cut.PNG").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(data)
    return root


def gallery_rows(project, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    store = project.store(mode="r")
    sidecar = read_sidecar(project, name)
    key = sidecar["store_key"] if sidecar else gallery_key(name)
    return store.read(f"{key}/paths"), store.read(f"{key}/embeddings"), store.read(f"{key}/valid")


def test_index_then_search_finds_the_query_first(fused_project, gallery, cli) -> None:
    result = cli("-C", fused_project.root, "index", gallery, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model"] == "fused:avg"  # the only fused model: the default
    assert info["images"] == 26 and info["vectors"] == 24 and info["index"] == {"kind": "flat"}
    assert sorted(Path(b["path"]).name for b in info["bad"]) == ["cut.PNG", "garbage.jpg"]
    assert all(b["error"] for b in info["bad"])
    sidecar = read_sidecar(fused_project, "default")
    assert sidecar["model"] == "fused:avg" and sidecar["dim"] == 64 and sidecar["vectors"] == 24
    assert sidecar["paths"] == "gallery/default/paths"

    # the stored embeddings are the exported model's embeddings of the same files
    paths, embeddings, valid = gallery_rows(fused_project, "default")
    assert not any(Path(p).name in (".hidden.png", "notes.txt") for p in paths)
    from grappa_cli.model.export import EmbeddingModel
    from tests.serving.test_export import project_embedder

    model, backbone = project_embedder(fused_project, "fused:avg")
    from grappa_cli.data.transforms import eval_transform

    transform = eval_transform(backbone.data_config)
    good = [p for p, v in zip(paths, valid, strict=True) if v]
    with torch.inference_mode():
        expected = EmbeddingModel(model)(torch.stack([transform(Image.open(p).convert("RGB")) for p in good]))
    np.testing.assert_allclose(embeddings[valid], expected.numpy(), atol=1e-5)

    queries = [good[0], good[7], good[20]]
    result = cli("-C", fused_project.root, "search", *queries, "-n", "5", "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["model"] == "fused:avg" and found["k"] == 5 and len(found["results"]) == 3
    sims = embeddings[valid] @ embeddings[valid].T
    for query, item in zip(queries, found["results"], strict=True):
        assert item["query"] == query
        matches = item["matches"]
        assert [m["rank"] for m in matches] == [1, 2, 3, 4, 5]
        assert matches[0]["path"] == query and abs(matches[0]["score"] - 1) < 1e-4
        scores = [m["score"] for m in matches]
        assert scores == sorted(scores, reverse=True)
        # the exact top 5 of the stored embeddings
        row = good.index(query)
        assert [m["path"] for m in matches][1:] == [good[i] for i in np.argsort(-sims[row])[:5] if i != row][:4]

    table = cli("-C", fused_project.root, "search", queries[0], "--top", "2")
    assert table.exit_code == 0 and "1.0000" in table.stdout and "score" in table.stdout

    again = json.loads(cli("-C", fused_project.root, "index", gallery, "--json").stdout)
    assert again["embedding_skipped"] and again["index_skipped"]

    # --html: the same results as a page of thumbnails, in the order of the JSON answer
    page = fused_project.root / "out" / "found.html"
    shown = cli("-C", fused_project.root, "search", *queries, "-n", "5", "--html", page)
    assert shown.exit_code == 0, shown.stderr
    assert "wrote" in shown.stdout
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and text.count('class="query"') == 3
    for item in found["results"]:
        block = text.split(f'data-query="{item["query"]}"')[1].split('class="query"')[0]
        alts = re.findall(r'alt="rank (\d): ([^ ]*) \(score', block)
        assert [(int(r), n) for r, n in alts] == [(m["rank"], Path(m["path"]).name) for m in item["matches"]]
    for src in re.findall(r'<img src="([^"]*)"', text):
        with Image.open(page.parent / src) as img:
            img.load()
    assert (page.parent / "found_files").is_dir()
    wrong = cli("-C", fused_project.root, "search", queries[0], "--html", fused_project.root / "found.png")
    assert wrong.exit_code == 2 and "Error: --html needs a file name ending in .html" in wrong.stderr


def test_approximate_indexes_return_the_exact_top1(fused_project, gallery_images, cli, tmp_path) -> None:
    outsiders = make_image_folder(tmp_path / "outside", n_classes=3, per_class=2, seed=9)
    queries = sorted(str(p) for p in gallery_images.rglob("*.png")) + sorted(str(p) for p in outsiders.rglob("*.png"))
    top1, embeddings = {}, None
    for kind in ("flat", "ivf", "hnsw"):
        # one name: rebuilding the index with another type reuses the gallery's embeddings
        result = cli("-C", fused_project.root, "index", gallery_images, "--name", "approx", "--index", kind, "--json")
        assert result.exit_code == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["index"]["kind"] == kind and not info["index_skipped"]
        assert info["embedding_skipped"] == (kind != "flat")
        assert read_sidecar(fused_project, "approx")["index"] == info["index"]
        stored = gallery_rows(fused_project, "approx")[1]
        if embeddings is not None:
            np.testing.assert_array_equal(stored, embeddings)
        embeddings = stored
        extra = ["--nprobe", "1000"] if kind == "ivf" else []  # every list: IVF is then exact
        result = cli("-C", fused_project.root, "search", *queries, "--name", "approx", "--top-k", "3", "--json", *extra)
        assert result.exit_code == 0, result.stderr
        found = json.loads(result.stdout)
        top1[kind] = [r["matches"][0]["path"] for r in found["results"]]
        if kind == "ivf":
            assert info["index"] == {"kind": "ivf", "nlist": 20, "nprobe": 16}  # round(4 sqrt(24)), max(16, ...)
            assert found["index"]["nprobe"] == 20
    assert top1["flat"][:24] == queries[:24]
    assert top1["ivf"] == top1["flat"] and top1["hnsw"] == top1["flat"]


def test_errors(fused_project, gallery_images, cli, tmp_path) -> None:
    project = copy_project(fused_project, tmp_path / "copy")
    shutil.rmtree(project.root / "indexes", ignore_errors=True)  # other tests index the shared project
    project.store().delete("gallery")
    query = str(next(gallery_images.rglob("*.png")))
    result = cli("-C", project.root, "search", query)
    assert result.exit_code == 1
    assert "no index named 'default'" in result.stderr and "grappa index" in result.stderr

    assert cli("-C", project.root, "index", gallery_images, "--model", "fused:avg").exit_code == 0
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    result = cli("-C", project.root, "search", query, str(bad))
    assert result.exit_code == 1 and "cannot read query image" in result.stderr and "bad.jpg" in result.stderr
    result = cli("-C", project.root, "search", str(tmp_path / "missing.png"))
    assert result.exit_code == 1 and "does not exist" in result.stderr
    result = cli("-C", project.root, "search", query, "--name", "other")
    assert result.exit_code == 1 and "no index named 'other'" in result.stderr and "existing indexes: default" in \
        result.stderr
    result = cli("-C", project.root, "index", tmp_path)  # another folder under the same name
    assert result.exit_code == 1 and "index 'default' were made from other inputs (input images)" in result.stderr
    assert "--force" in result.stderr and "--name" in result.stderr
    result = cli("-C", project.root, "index", tmp_path / "nowhere")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    result = cli("-C", project.root, "index", gallery_images, "--index", "lsh")
    assert result.exit_code == 2 and "'lsh' is not one of 'flat', 'ivf', 'hnsw'" in result.stderr
    result = cli("-C", project.root, "index", gallery_images, "--name", "../escape")
    assert result.exit_code == 2 and "invalid index name" in result.stderr

    # retrain one of the fused sets with another seed: the fused model changed, the index is stale
    assert cli("-C", project.root, "adapt", "--k", "4", "--seed", "7", "--force").exit_code == 0
    result = cli("-C", project.root, "search", query)
    assert result.exit_code == 1
    assert "index 'default' is stale" in result.stderr and "fused:avg" in result.stderr
    assert "grappa index" in result.stderr and "--force" in result.stderr
    result = cli("-C", project.root, "index", gallery_images, "--model", "fused:avg")
    assert result.exit_code == 1 and "made from other inputs" in result.stderr and "--force" in result.stderr
    assert cli("-C", project.root, "index", gallery_images, "--model", "fused:avg", "--force").exit_code == 0
    result = cli("-C", project.root, "search", query, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["results"][0]["matches"][0]["path"] == query

    # other weights under the same settings (a GPU retrain): the index no longer holds this model's embeddings
    rewrite_adaptor_weights(project, "k4")
    result = cli("-C", project.root, "search", query)
    assert result.exit_code == 1 and "index 'default' is stale" in result.stderr
    assert "the weights of its adaptor sets or fusion" in result.stderr

    # an index from before the weights were recorded says so, and how to rebuild it
    sidecar_path = project.indexes_dir / "default.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar.pop("model_weights")
    sidecar_path.write_text(json.dumps(sidecar))
    result = cli("-C", project.root, "search", query)
    assert result.exit_code == 1 and "older grappa that did not record the model's weights" in result.stderr
    assert "--force" in result.stderr


@pytest.mark.slow
def test_killed_index_resumes_to_identical_embeddings(tmp_path: Path, cli) -> None:
    images = make_image_folder(tmp_path / "images", n_classes=4, per_class=6)
    photos = make_image_folder(tmp_path / "photos", n_classes=4, per_class=50, size=64, seed=4, fmt="jpg")
    (photos / "class_001" / "broken.jpg").write_bytes(b"not a jpeg")
    project = write_tiny_project(tmp_path / "proj", images)
    from grappa_cli.config import update_file

    def small_chunks(doc):
        doc["data"]["chunk_size"] = 8
        doc["data"]["batch_size"] = 4

    update_file(project.config_path, small_chunks)
    twin = copy_project(project, tmp_path / "twin")
    reference = cli("-C", twin.root, "index", photos, "--model", "backbone")
    assert reference.exit_code == 0, reference.stderr

    env = {**os.environ, "GRAPPA_PROGRESS": "0"}
    args = [sys.executable, "-m", "grappa_cli", "-C", str(project.root), "index", str(photos), "--model", "backbone"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = project.store_path / "gallery" / "default" / "embeddings_done" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if done_dir.exists() and len(list(done_dir.iterdir())) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = project.store(mode="r")
    done = store.read("gallery/default/embeddings_done")
    assert 0 < done.sum() < len(done), "the kill should land mid-embedding"
    assert not store.provenance("gallery/default")["complete"]
    assert read_sidecar(project, "default") is None

    resumed = run_subprocess("-C", project.root, "index", photos, "--model", "backbone")
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped unreadable image" in resumed.stderr and "broken.jpg" in resumed.stderr
    paths, embeddings, valid = gallery_rows(project, "default")
    ref_paths, ref_embeddings, ref_valid = gallery_rows(twin, "default")
    assert len(paths) == 201 and valid.sum() == 200
    np.testing.assert_array_equal(paths, ref_paths)
    np.testing.assert_array_equal(valid, ref_valid)
    np.testing.assert_array_equal(embeddings, ref_embeddings)
