"""Fixtures for the pipeline stages: a tiny project carried through extract and cluster."""

from __future__ import annotations

import pytest


@pytest.fixture
def extracted_project(tiny_project, cli):
    """The tiny project after `grappa extract` (training set and test split)."""
    result = cli("-C", tiny_project.root, "extract")
    assert result.exit_code == 0, result.stderr
    return tiny_project


@pytest.fixture
def clustered_project(extracted_project, cli):
    """... and after `grappa cluster --k 2,4`."""
    result = cli("-C", extracted_project.root, "cluster", "--k", "2,4")
    assert result.exit_code == 0, result.stderr
    return extracted_project


@pytest.fixture
def adapted_project(clustered_project, cli):
    """... and after `grappa adapt` (one epoch per set)."""
    result = cli("-C", clustered_project.root, "adapt")
    assert result.exit_code == 0, result.stderr
    return clustered_project



def trained_on_one_domain(root):
    """A tiny project trained through every stage on one folder (``shapes``), and a second folder
    (``stripes``, 5 training images) to add: the start of an incremental update."""
    from grappa_cli.config import update_file
    from grappa_cli.pipeline.run import run_pipeline
    from tests.conftest import make_image_folder, make_tiny_project

    shapes = make_image_folder(root / "shapes", n_classes=2, per_class=6)
    stripes = make_image_folder(root / "stripes", n_classes=2, per_class=5, seed=7)
    project = make_tiny_project(root / "project", shapes)

    def edit(doc):
        doc["cluster"]["k"] = [2]
        doc["cluster"]["k_added"] = [2, 3]
        doc["fuse"]["strategies"] = ["avg", "neighbor"]
        doc["fuse"]["neighbors"] = 2
        doc["backbone"]["kwargs"]["depth"] = 1

    update_file(project.config_path, edit)
    run_pipeline(project)
    return project, stripes
