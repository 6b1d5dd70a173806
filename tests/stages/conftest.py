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

