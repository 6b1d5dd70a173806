"""Fixtures for evaluation and reports: a tiny project carried through the pipeline once per
session (extract, cluster --k 2,4, adapt, fuse avg; then eval), copied for each test.

The session builds mirror ``tests.conftest.tiny_project`` (same tiny random ViT and small
settings); each test gets its own copy of the project folder, so tests never share state.
The synthetic images are shared read-only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import copy_project, make_image_folder, make_tiny_project


def grappa(*args: object) -> None:
    """Run a grappa command in-process (outside the function-scoped ``cli`` fixture); must succeed."""
    from grappa_cli.cli.app import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    assert code == 0, f"grappa {' '.join(map(str, args))} exited with {code}"


def make_hard_image_folder(root: Path) -> Path:
    """4 classes x 6 images (test split: classes 2, 3) where two images of each test class are
    pure noise, so that retrieval metrics are neither 0 nor 100% and models differ."""
    import numpy as np
    from PIL import Image

    make_image_folder(root, n_classes=4, per_class=6)
    rng = np.random.default_rng(1)
    for c in (2, 3):
        for i in range(2):
            noise = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(noise).save(root / f"class_{c:03d}" / f"img_{i:03d}.png")
    return root






@pytest.fixture(scope="session")
def fused_base(tmp_path_factory):
    """Built once: extracted, clustered (k = 2, 4), adapted (1 epoch), fused with avg. Do not modify."""
    base = tmp_path_factory.mktemp("eval-fused")
    images = make_hard_image_folder(base / "images")
    project = make_tiny_project(base / "proj", images)
    grappa("-C", project.root, "extract")
    grappa("-C", project.root, "cluster", "--k", "2,4")
    grappa("-C", project.root, "adapt")
    grappa("-C", project.root, "fuse", "--strategy", "avg")
    return project


@pytest.fixture(scope="session")
def evaluated_base(fused_base, tmp_path_factory):
    """``fused_base`` after `grappa eval` (every model, the one task). Do not modify."""
    project = copy_project(fused_base, tmp_path_factory.mktemp("eval-evaluated") / "proj")
    grappa("-C", project.root, "eval")
    return project


@pytest.fixture
def fused_project(fused_base, tmp_path):
    """A private copy of ``fused_base``."""
    return copy_project(fused_base, tmp_path / "proj")


@pytest.fixture
def evaluated_project(evaluated_base, tmp_path):
    """A private copy of ``evaluated_base``."""
    return copy_project(evaluated_base, tmp_path / "proj")


def write_result(project, model: str, task: str, rp: float, map_r: float, *, uses_labels: bool = False) -> Path:
    """A results file as `grappa eval` writes it, with chosen metric values (for selection logic)."""
    from grappa_cli.records import provenance as prov

    record = prov.record("eval", {"model": model, "task": task}, {})
    record["complete"] = True
    path = project.results_dir / model.replace(":", "-") / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "model": model, "task": task, "metrics": {"r_precision": rp, "map@r": map_r, "recall@1": 0.5},
        "num_queries": 10, "num_skipped": 0, "images": 10, "unreadable": 0, "uses_labels": uses_labels,
        "embeddings": f"eval/{model.replace(':', '-')}/{task}", "provenance": record,
    }))
    return path
