"""`grappa run`: every stage not complete, in order; a second run does nothing."""

from __future__ import annotations

import json

import pytest

from grappa_cli.records import artifacts


def _configure_small(project) -> None:
    from grappa_cli.config import update_file

    def edit(doc):
        doc["cluster"]["k"] = [2, 4]
        doc["fuse"]["strategies"] = ["avg"]

    update_file(project.config_path, edit)


def test_run_twice_then_config_change_reruns_only_dependents(tiny_project, cli) -> None:
    _configure_small(tiny_project)
    first = cli("-C", tiny_project.root, "run", "--json")
    assert first.exit_code == 0, first.stderr
    done = {s["stage"]: s["done"] for s in json.loads(first.stdout)["stages"]}
    assert done["extract"] == ["features/train", "features/test/shapes"]
    assert done["cluster"] == ["k2", "k4"] and done["adapt"] == ["k2", "k4"] and done["fuse"] == ["avg"]
    assert len(done["eval"]) == 4  # backbone, two sets, fused:avg on the one task
    assert (tiny_project.reports_dir / "table2.md").is_file()

    second = cli("-C", tiny_project.root, "run")
    assert second.exit_code == 0, second.stderr
    assert "Everything is up to date; nothing to do." in second.stdout

    k4_before = artifacts.fingerprint(tiny_project, "adaptors/k4")
    from grappa_cli.config import update_file

    def more_epochs(doc):
        doc["adapt"]["epochs"] = 2

    update_file(tiny_project.config_path, more_epochs)
    third = cli("-C", tiny_project.root, "run", "--json")
    assert third.exit_code == 0, third.stderr
    done = {s["stage"]: s["done"] for s in json.loads(third.stdout)["stages"]}
    assert done["extract"] == [] and done["cluster"] == []
    assert done["adapt"] == ["k2", "k4"] and done["fuse"] == ["avg"]
    assert artifacts.fingerprint(tiny_project, "adaptors/k4") != k4_before
    assert sorted(done["eval"]) == ["adaptor:k2/shapes", "adaptor:k4/shapes", "fused:avg/shapes"]


def _metrics(project) -> dict:
    return {f"{p.parent.name}/{p.stem}": json.loads(p.read_text())["metrics"]
            for p in sorted(project.results_dir.glob("*/*.json"))}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(tiny_project, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import copy_project, run_subprocess

    _configure_small(tiny_project)
    twin = copy_project(tiny_project, tmp_path / "twin")
    reference = run_subprocess("-C", twin.root, "run")
    assert reference.returncode == 0, reference.stderr

    env = {**os.environ, "GRAPPA_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "grappa_cli", "-C", str(tiny_project.root), "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tiny_project.adaptors_dir / "k2.safetensors"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (tiny_project.fusion_dir / "avg.safetensors").exists(), "kill mid-pipeline"

    resumed = run_subprocess("-C", tiny_project.root, "run")
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics(tiny_project) == _metrics(twin)
