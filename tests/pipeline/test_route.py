"""`grappa fuse --strategy route`: per-source choices without labels, and a router that applies them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
from grappa_cli.pipeline.stages import models
from grappa_cli.records import artifacts


@pytest.fixture
def two_source_project(tmp_path, cli):
    """A tiny project trained on two folders that look different (dark stripes, bright stripes)."""
    from grappa_cli.config import update_file
    from grappa_cli.setup.tasks import add_task
    from tests.conftest import make_image_folder, make_tiny_project

    shapes = make_image_folder(tmp_path / "shapes", n_classes=2, per_class=8, seed=1)
    other = make_image_folder(tmp_path / "other", n_classes=2, per_class=8, seed=11)
    for path in other.rglob("*.png"):  # a second domain: inverted colours
        from PIL import Image, ImageOps

        ImageOps.invert(Image.open(path).convert("RGB")).save(path)
    project = make_tiny_project(tmp_path / "project", shapes)
    add_task(project, "other", other, train=True)

    def edit(doc):
        doc["cluster"]["k"] = [2, 4]
        doc["fuse"]["strategies"] = ["avg", "route"]
        doc["fuse"]["route_images"] = 6

    update_file(project.config_path, edit)
    for command in (("extract",), ("cluster",), ("adapt",)):
        result = cli("-C", project.root, *command)
        assert result.exit_code == 0, result.stderr
    return project


def test_route_records_a_choice_per_source_and_routes_training_images_by_it(two_source_project, cli):
    project = two_source_project
    result = cli("-C", project.root, "fuse", "--strategy", "route")
    assert result.exit_code == 0, result.stderr
    record = artifacts.read_checkpoint_record(project.fusion_dir / "route.safetensors")
    routing = record["info"]["routing"]
    assert routing["sources"] == ["shapes", "other"]
    assert routing["candidates"] == ["k2", "k4", "backbone"]
    table = np.asarray(routing["table"])
    assert table.shape == (2, 3)
    np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-6)
    assert set(np.unique(table)) <= {0.0, 1.0}  # temperature 0: one candidate per source
    scores = np.asarray(routing["scores"])
    assert (np.argmax(scores, axis=1) == np.argmax(table, axis=1)).all()
    assert routing["images"] == [6, 6]
    assert record["params"]["criterion"] == "partition" and not record["uses_labels"]
    chosen = [routing["candidates"][int(np.argmax(row))] for row in table]
    assert record["summary"]["routes"] == f"shapes->{chosen[0]} other->{chosen[1]}"  # what `grappa status` shows

    backbone = build_backbone(BackboneSpec.from_config(project.config()))
    model = models.load(project, models.parse("fused:route"), backbone).eval()
    assert model.fusion_kind == "router"
    layers = model.fusion_layers()
    assert all(layer.num_sources == 2 for layer in layers)
    # the routers separate the two domains on their training images, so the last layer's alpha
    # of a training image is (close to) its own source's row of the table
    accuracy = record["info"]["router_accuracy"]
    assert len(accuracy) == len(layers) and accuracy[-1] >= 0.9
    from grappa_cli.data.images import ImageDataset, make_loader
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.fusion.routing import training_sources

    store = project.store(mode="r")
    paths = [str(p) for p in store.read("features/train/paths")]
    _, source_of = training_sources(project.config(), paths)
    loader = make_loader(ImageDataset(paths, eval_transform(backbone.data_config)), batch_size=32, num_workers=0,
                         device=torch.device("cpu"))
    with torch.inference_mode():
        batch = next(iter(loader))
        _, alpha = model(batch.images, return_attention=True)
    expected = torch.as_tensor(table[source_of[batch.indices.numpy()], :2], dtype=torch.float32)
    close = (alpha[:, -1, :] - expected).abs().max(dim=1).values < 0.2
    assert close.float().mean() >= 0.9


def test_one_source_gets_one_constant_choice(adapted_project, cli):
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "route")
    assert result.exit_code == 0, result.stderr
    record = artifacts.read_checkpoint_record(adapted_project.fusion_dir / "route.safetensors")
    table = np.asarray(record["info"]["routing"]["table"])
    assert table.shape == (1, 3)
    backbone = build_backbone(BackboneSpec.from_config(adapted_project.config()))
    model = models.load(adapted_project, models.parse("fused:route"), backbone).eval()
    with torch.inference_mode():
        _, alpha = model(torch.randn(3, 3, 32, 32), return_attention=True)
    expected = torch.as_tensor(table[0, :2], dtype=torch.float32).expand_as(alpha)
    torch.testing.assert_close(alpha, expected)


def test_the_criterion_is_part_of_the_fingerprint(adapted_project, cli):
    from grappa_cli.config import update_file

    assert cli("-C", adapted_project.root, "fuse", "--strategy", "route").exit_code == 0
    update_file(adapted_project.config_path, lambda doc: doc["fuse"].__setitem__("route_criterion", "view-match"))
    result = cli("-C", adapted_project.root, "fuse", "--strategy", "route")
    assert result.exit_code != 0 and "criterion" in result.stderr


def test_report_says_where_each_task_is_routed(two_source_project, cli):
    import csv
    import io

    project = two_source_project
    for command in (("fuse", "--strategy", "route"), ("eval", "-m", "fused:route,adaptor:k2,adaptor:k4"), ("report",)):
        result = cli("-C", project.root, *command)
        assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO((project.reports_dir / "routing.csv").read_text())))
    assert [r["task"] for r in rows] == ["shapes", "other"]
    for row in rows:
        weights = {c: float(row[c]) for c in ("k2", "k4", "backbone")}
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-3) and min(weights.values()) >= 0
        assert row["routed_to"] == max(weights, key=weights.get)
        assert row["oracle"] in ("k2", "k4")  # the reference: the best single set on the test labels
    text = (project.reports_dir / "routing.md").read_text()
    assert "| shapes |" in text and "Choice per training source" in text
    table = list(csv.DictReader(io.StringIO((project.reports_dir / "table2.csv").read_text())))
    assert [r["model"] for r in table if r["default"] == "true"] == ["fused:route"]


def test_route_after_an_incremental_update_scores_each_source_on_the_sets_that_labelled_it(tmp_path):
    """Sets clustered before the training set grew label only its first rows, sets of added images only
    the added rows: each source is scored on the sets that labelled it, the others score 0."""
    from grappa_cli.config import update_file
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.setup.tasks import add_task
    from tests.pipeline.conftest import trained_on_one_domain

    project, stripes = trained_on_one_domain(tmp_path)
    add_task(project, "stripes", stripes, train=True)
    update_file(project.config_path, lambda doc: doc["fuse"].__setitem__("strategies", ["avg", "route"]))
    run_pipeline(project)
    record = artifacts.read_checkpoint_record(project.fusion_dir / "route.safetensors")
    routing = record["info"]["routing"]
    assert routing["sources"] == ["shapes", "stripes"]
    assert routing["candidates"] == ["k2", "k2-stripes", "k3-stripes", "backbone"]
    scores = np.asarray(routing["scores"])
    assert scores[0, 1:].tolist() == [0.0, 0.0, 0.0]  # shapes: only k2 labelled its rows
    assert scores[1, 0] == 0.0  # stripes: k2 was clustered before they were added
    assert record["summary"]["routes"].startswith("shapes->k2 stripes->k")
