"""Same project, same seed, same numbers: a run beside CPU-bound processes equals a quiet run, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image_folder, make_tiny_project, run_subprocess


def _project(root: Path, images: Path):
    from grappa_cli.config import update_file

    project = make_tiny_project(root, images)

    def edit(doc):
        doc["cluster"]["k"] = [2, 3]
        doc["fuse"]["strategies"] = ["avg", "neighbor", "route"]
        doc["fuse"]["neighbors"] = 2
        doc["fuse"]["epochs"] = 2

    update_file(project.config_path, edit)
    return project


def _tensors(project) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    found = {}
    for path in sorted((project.root / "checkpoints").glob("*/*.safetensors")):
        for name, value in load_file(str(path)).items():
            found[f"{path.parent.name}/{path.stem}/{name}"] = value
    return found


def _results(project) -> dict[str, dict[str, float]]:
    return {f"{p.parent.name}/{p.stem}": json.loads(p.read_text())["metrics"]
            for p in sorted(project.results_dir.glob("*/*.json"))}


@pytest.mark.slow
def test_a_busy_machine_gives_the_same_weights_features_and_metrics(tmp_path) -> None:
    images = make_image_folder(tmp_path / "images", n_classes=3, per_class=6)
    quiet, busy = _project(tmp_path / "quiet", images), _project(tmp_path / "busy", images)
    env = {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}  # grappa chooses, as for a user
    done = run_subprocess("-C", quiet.root, "run", env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(15)  # let the load average rise: the thread count was once read from it
        done = run_subprocess("-C", busy.root, "run", env=env, timeout=900)
        assert done.returncode == 0, done.stderr
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()

    a, b = _tensors(quiet), _tensors(busy)
    assert set(a) == set(b) and any(name.startswith("fusion/route/") for name in a)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert _results(quiet) == _results(busy)
    stores = [project.store(mode="r") for project in (quiet, busy)]
    for key in ("features/train/embeddings", "clusters/k2/labels", "clusters/k3/labels",
                "features/test/shapes/embeddings"):
        assert np.array_equal(stores[0].read(key), stores[1].read(key)), key
    from grappa_cli.records import artifacts

    record = artifacts.read_checkpoint_record(busy.adaptors_dir / "k2.safetensors")
    assert record["compute"]["threads"] >= 1  # what the numbers depend on is recorded
