"""A tiny pipeline run once without faults: the reference every faulted run must reproduce."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image_folder, make_tiny_project


def configure_tiny(project) -> None:
    """One k, one strategy, a one-block ViT: every stage runs, each in a fraction of a second."""
    from grappa_cli.config import update_file

    def edit(doc):
        doc["cluster"]["k"] = [2]
        doc["fuse"]["strategies"] = ["avg"]
        doc["backbone"]["kwargs"]["depth"] = 1

    update_file(project.config_path, edit)


def outputs(project) -> dict[str, object]:
    """Every result a run leaves: metrics, model tensors, stored arrays and the report table."""
    from safetensors.numpy import load_file

    found: dict[str, object] = {}
    for path in sorted(project.results_dir.glob("*/*.json")):
        found[f"results/{path.parent.name}/{path.stem}"] = json.loads(path.read_text())["metrics"]
    for path in sorted(project.checkpoints.glob("*/*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            found[f"{path.parent.name}/{path.stem}:{name}"] = tensor.tobytes()
    store = project.store(mode="r")
    for key in ("features/train", "features/test/shapes", "eval/adaptor-k2/shapes", "eval/fused-avg/shapes"):
        for name in ("embeddings", "valid", "paths", "labels"):
            if store.exists(f"{key}/{name}"):
                found[f"{key}/{name}"] = np.asarray(store.read(f"{key}/{name}")).tobytes()
    for name in ("centroids", "labels", "sizes"):
        found[f"clusters/k2/{name}"] = store.read(f"clusters/k2/{name}").tobytes()
    found["table2.csv"] = (project.reports_dir / "table2.csv").read_text()
    return found


def leftovers(root: Path) -> list[str]:
    """Temporary files or moved-out groups that a finished run should not leave behind."""
    names = [p for p in root.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".trash-" in p.name]
    return [str(p.relative_to(root)) for p in names]


@dataclass
class Reference:
    fresh: Path  # a configured project before any run (copied for each faulted run)
    outputs: dict[str, object]
    writes: list[str]  # what each durable write of an uninterrupted run wrote, in order


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.storage import faults

    base = tmp_path_factory.mktemp("faults")
    images = make_image_folder(base / "images", n_classes=2, per_class=4)
    fresh = make_tiny_project(base / "fresh", images)
    configure_tiny(fresh)
    ran = fresh.root.parent / "reference"
    shutil.copytree(fresh.root, ran)
    from grappa_cli.project import Project

    writes: list[str] = []
    with faults.arm(None, record=writes):
        run_pipeline(Project(ran))
    return Reference(fresh.root, outputs(Project(ran)), writes)
