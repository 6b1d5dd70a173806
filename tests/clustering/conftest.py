"""Fixtures for the clustering tests: planted Gaussian blobs and projects holding features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cluster_data import planted_blobs, write_features


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    return planted_blobs()


@pytest.fixture
def empty_project(tmp_path: Path):
    """A fresh project (no features yet) with small clustering settings."""
    import tomlkit

    from grappa_cli.setup.init import create_project

    project = create_project(tmp_path / "proj")
    doc = tomlkit.parse(project.config_path.read_text())
    doc["cluster"]["k"] = [4, 8]
    doc["cluster"]["niter"] = 10
    project.config_path.write_text(tomlkit.dumps(doc))
    project.config()
    return project


@pytest.fixture
def feature_project(empty_project):
    """A project whose ``features/train`` holds 400 float16 blob features (8 blobs)."""
    x, _ = planted_blobs()
    write_features(empty_project, x.astype(np.float16))
    return empty_project
