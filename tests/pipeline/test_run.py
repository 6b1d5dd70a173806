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


def test_an_edit_of_grappa_toml_during_a_run_stops_it_before_the_next_stage(tiny_project, monkeypatch) -> None:
    """The run reads grappa.toml once: a stage started before the edit finishes with the old settings,
    and the run stops before the next stage with one line, instead of half-applying the edit."""
    from grappa_cli.config import update_file
    from grappa_cli.errors import ConfigError
    from grappa_cli.pipeline import run as run_mod

    _configure_small(tiny_project)
    original = run_mod._RUNNERS["cluster"]
    seen: dict[str, object] = {}

    def cluster_then_edit(project, config, device, view):
        update_file(project.config_path, lambda doc: doc["cluster"].__setitem__("k", [2, 8]))
        seen["k during the stage"] = project.config().cluster.k  # the pinned configuration
        return original(project, config, device, view)

    monkeypatch.setitem(run_mod._RUNNERS, "cluster", cluster_then_edit)
    with pytest.raises(ConfigError) as stopped:
        run_mod.run_pipeline(tiny_project, until="adapt")
    assert seen["k during the stage"] == [2, 4]
    assert "was edited while `grappa run` was working" in stopped.value.message
    store = tiny_project.store(mode="r")
    assert sorted(store.children("clusters")) == ["k2", "k4"]  # made with the settings the run started with
    assert not tiny_project.adaptors_dir.exists() or not any(tiny_project.adaptors_dir.iterdir())
    assert tiny_project.config().cluster.k == [2, 8]  # outside the run, the file as it is now


def test_a_changed_parameter_is_judged_alike_by_status_the_stage_guards_and_run(tiny_project, cli, monkeypatch) -> None:
    """One staleness decision (records.artifacts.judge): after `[adapt] lr` changes, status (the planner),
    each stage's own guard and `run` agree that exactly the adaptor sets and what depends on them are stale."""
    from grappa_cli.config import update_file

    _configure_small(tiny_project)
    assert cli("-C", tiny_project.root, "run").exit_code == 0
    update_file(tiny_project.config_path, lambda doc: doc["adapt"].__setitem__("lr", 0.002))
    asked: list[str] = []
    judge = artifacts.judge

    def counting(record, params, inputs, **kwargs):
        asked.append(str((record or {}).get("stage")))
        return judge(record, params, inputs, **kwargs)

    monkeypatch.setattr(artifacts, "judge", counting)

    status = json.loads(cli("-C", tiny_project.root, "status", "--json").stdout)
    stale = {a["id"] for a in status["artifacts"] if a["state"] != "complete"}
    assert stale == {"adaptors/k2", "adaptors/k4", "fusion/avg", "results/adaptor-k2/shapes",
                     "results/adaptor-k4/shapes", "results/fused-avg/shapes", "reports/table2"}
    reasons = {a["id"]: a["detail"] for a in status["artifacts"]}
    assert "setting lr changed" in reasons["adaptors/k2"]
    assert {"extract", "cluster", "adapt", "fuse", "eval"} <= set(asked)  # the planner judged every kind

    asked.clear()
    extract = json.loads(cli("-C", tiny_project.root, "extract", "--json").stdout)
    assert all(r["skipped"] for r in extract)  # the features are current for the extract guard too
    clustered = cli("-C", tiny_project.root, "cluster", "--k", "2,4")
    assert clustered.exit_code == 0 and "is complete; skipped" in clustered.stderr + clustered.stdout
    refused = cli("-C", tiny_project.root, "adapt")
    assert refused.exit_code == 1 and "lr (0.001 -> 0.002)" in refused.stderr
    assert {"extract", "cluster", "adapt"} <= set(asked)  # each guard asked the same function

    again = cli("-C", tiny_project.root, "run", "--json")
    assert again.exit_code == 0, again.stderr
    done = {s["stage"]: s["done"] for s in json.loads(again.stdout)["stages"]}
    assert done["extract"] == [] and done["cluster"] == []
    assert done["adapt"] == ["k2", "k4"] and done["fuse"] == ["avg"]
    assert sorted(done["eval"]) == ["adaptor:k2/shapes", "adaptor:k4/shapes", "fused:avg/shapes"]
