"""`grappa embed`: a folder's or a task's embeddings as Parquet (path + embedding per row) or NumPy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra (part of [dev]) is not installed")


def _reference(project, model_name, paths):
    """What grappa's own model gives for these files."""
    from grappa_cli.data.images import load_rgb
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
    from grappa_cli.model.export import EmbeddingModel
    from grappa_cli.pipeline.stages import models

    backbone = build_backbone(BackboneSpec.from_config(project.config()))
    model = EmbeddingModel(models.load(project, models.parse(model_name), backbone))
    transform = eval_transform(backbone.data_config)
    with torch.inference_mode():
        return model(torch.stack([transform(load_rgb(str(p))) for p in paths])).numpy()


def test_a_folder_to_parquet_with_relative_paths_and_the_model_in_the_metadata(fused_project, gallery_images,
                                                                               cli, tmp_path):
    folder = tmp_path / "gallery"
    shutil.copytree(gallery_images, folder)
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "e.parquet"
    result = cli("-C", fused_project.root, "embed", folder, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == "fused:avg" and doc["format"] == "parquet"  # the project's default model
    assert [b["path"].endswith("broken.png") for b in doc["bad"]] == [True]  # skipped and listed
    table = pq.read_table(out)
    images = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png") if p.name != "broken.png")
    assert sorted(table.column("path").to_pylist()) == images and doc["rows"] == len(images)
    kind = table.schema.field("embedding").type
    assert kind.list_size == doc["dim"] and str(kind.value_type) == "float"  # a fixed-size list of float32
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    paths = [folder / p for p in table.column("path").to_pylist()]
    np.testing.assert_allclose(vectors, _reference(fused_project, "fused:avg", paths), atol=1e-5)
    identity = json.loads(table.schema.metadata[b"grappa.model"])
    assert identity["name"] == "fused:avg" and identity["embed_dim"] == doc["dim"] and identity["normalised"]

    again = cli("-C", fused_project.root, "embed", folder, "-o", out)
    assert again.exit_code == 1 and "already exists" in again.stderr
    again = cli("-C", fused_project.root, "embed", folder, "-o", out, "--force", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped_embedding"]  # resumed from the store


def test_a_task_split_to_npy_with_its_path_list(fused_project, cli, tmp_path):
    from grappa_cli.data import sources

    out = tmp_path / "shapes.npy"
    result = cli("-C", fused_project.root, "embed", "shapes", "-o", out, "-m", "backbone")
    assert result.exit_code == 0, result.stderr
    listed = (tmp_path / "shapes.paths.txt").read_text().splitlines()
    test = sources.load_task(fused_project.config(), "shapes").test
    assert listed == [str(p) for p in test.paths]
    vectors = np.load(out)
    assert vectors.shape[0] == len(listed) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, _reference(fused_project, "backbone", listed), atol=1e-5)


def test_bad_outputs_are_refused_before_any_work(fused_project, cli, tmp_path):
    result = cli("-C", fused_project.root, "embed", "shapes", "-o", tmp_path / "e.csv")
    assert result.exit_code == 2 and "cannot tell the format of e.csv" in result.stderr
    result = cli("-C", fused_project.root, "embed", tmp_path / "nowhere", "-o", tmp_path / "e.npy")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "e.npy").exists()
