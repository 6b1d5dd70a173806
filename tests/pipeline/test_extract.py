"""`grappa extract`: features of the frozen backbone, bad files, resume, torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
from grappa_cli.pipeline.stages.embed import read_embeddings
from tests.conftest import make_image_folder, run_subprocess


def test_extract_matches_the_backbone(extracted_project) -> None:
    from PIL import Image

    from grappa_cli.data.transforms import eval_transform

    store = extracted_project.store(mode="r")
    record = store.provenance("features/train")
    assert record["complete"] and record["stage"] == "extract"
    paths = store.read("features/train/paths")
    embeddings, _rows = read_embeddings(store, "features/train")
    assert len(paths) == 12  # imagefolder: 2 of the 4 classes (sorted) are the training half, 6 images each
    assert all("class_000" in p or "class_001" in p for p in paths)
    assert store.read("features/train/valid").all()

    backbone = build_backbone(BackboneSpec.from_config(extracted_project.config()))
    transform = eval_transform(backbone.data_config)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[:4]])
    with torch.inference_mode():
        expected = backbone(batch).numpy()
    # stored as float16 by default
    np.testing.assert_allclose(embeddings[:4], expected.astype(np.float16).astype(np.float32), rtol=0, atol=0)

    test = store.provenance("features/test/shapes")
    assert test["complete"]
    labels = store.read("features/test/shapes/labels")
    assert sorted(set(labels.tolist())) == [0, 1] and len(labels) == 12


def test_second_run_skips_and_force_redoes(extracted_project, cli) -> None:
    import json

    result = cli("-C", extracted_project.root, "extract", "--json")
    assert result.exit_code == 0
    assert [r["skipped"] for r in json.loads(result.stdout)] == [True, True]
    result = cli("-C", extracted_project.root, "extract", "--split", "train", "--force", "--json")
    assert result.exit_code == 0
    assert [r["skipped"] for r in json.loads(result.stdout)] == [False]


def test_bad_images_are_skipped_and_listed(tiny_project, cli, image_folder: Path) -> None:
    bad = image_folder / "class_000" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = image_folder / "class_001" / "truncated.png"
    data = (image_folder / "class_001" / "img_000.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    result = cli("-C", tiny_project.root, "extract", "--split", "train")
    assert result.exit_code == 0, result.stderr
    assert "broken.jpg" in result.stderr and "truncated.png" in result.stderr
    store = tiny_project.store(mode="r")
    record = store.provenance("features/train")
    assert sorted(Path(b["path"]).name for b in record["bad_files"]) == ["broken.jpg", "truncated.png"]
    valid = store.read("features/train/valid")
    assert valid.sum() == 12 and len(valid) == 14


def test_no_readable_image_is_an_error(tmp_path, cli) -> None:
    from grappa_cli.config import update_file
    from grappa_cli.setup.init import create_project

    folder = tmp_path / "junk" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.jpg").write_text("nope")
    project = create_project(tmp_path / "p")

    def edit(doc):
        doc["data"]["train"] = [str(tmp_path / "junk")]
        doc["backbone"]["pretrained"] = False
        doc["backbone"]["name"] = "vit_small_patch16_224"
        doc["backbone"]["kwargs"] = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}

    update_file(project.config_path, edit)
    result = cli("-C", project.root, "extract", "--split", "train")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error:") and "none of the 3 images could be read" in result.stderr
    assert not project.store(mode="r").provenance("features/train")["complete"]


def test_stale_features_are_refused(extracted_project, cli) -> None:
    from grappa_cli.config import update_file

    def edit(doc):
        doc["data"]["feature_dtype"] = "float32"

    update_file(extracted_project.config_path, edit)
    result = cli("-C", extracted_project.root, "extract", "--split", "train")
    assert result.exit_code == 1
    assert "features/train was made from other inputs" in result.stderr and "--force" in result.stderr


@pytest.mark.slow
def test_killed_extraction_resumes_to_identical_features(tmp_path: Path, tiny_project) -> None:
    from grappa_cli.config import update_file

    make_image_folder(Path(tiny_project.config().tasks["shapes"].root), n_classes=4, per_class=60, seed=3)

    def edit(doc):
        doc["data"]["chunk_size"] = 4
        doc["data"]["batch_size"] = 2
        doc["data"]["feature_dtype"] = "float32"

    update_file(tiny_project.config_path, edit)
    from tests.conftest import copy_project

    twin = copy_project(tiny_project, tmp_path / "twin")
    reference = run_subprocess("-C", twin.root, "extract", "--split", "train")
    assert reference.returncode == 0, reference.stderr
    expected = twin.store(mode="r").read("features/train/embeddings")

    env = {**os.environ, "GRAPPA_PROGRESS": "0"}
    args = [sys.executable, "-m", "grappa_cli", "-C", str(tiny_project.root), "extract", "--split", "train"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = tiny_project.store_path / "features" / "train" / "embeddings_done" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if done_dir.exists() and len(list(done_dir.iterdir())) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = tiny_project.store(mode="r")
    done = store.read("features/train/embeddings_done")
    assert 0 < done.sum() < len(done), "the kill should land mid-extraction"
    assert not store.provenance("features/train")["complete"]

    resumed = run_subprocess("-C", tiny_project.root, "extract", "--split", "train")
    assert resumed.returncode == 0, resumed.stderr
    store = tiny_project.store(mode="r")
    assert store.provenance("features/train")["complete"]
    np.testing.assert_array_equal(store.read("features/train/embeddings"), expected)


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_match_one(extracted_project, tmp_path: Path) -> None:
    from tests.conftest import copy_project

    single = extracted_project.store(mode="r").read("features/train/embeddings")
    other = copy_project(extracted_project, tmp_path / "copy")
    env = {**os.environ, "GRAPPA_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "grappa_cli", "-C", str(other.root), "extract", "--split", "train", "--force"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = other.store(mode="r")
    assert store.provenance("features/train")["complete"]
    np.testing.assert_array_equal(store.read("features/train/embeddings"), single)
