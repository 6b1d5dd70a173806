"""One planner for `run`, `status` and the stages: transitive staleness, interrupted work, edits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from grappa_cli.config import update_file
from grappa_cli.pipeline import planner


def _small(project) -> None:
    def edit(doc):
        doc["cluster"]["k"] = [2]
        doc["fuse"]["strategies"] = ["avg"]

    update_file(project.config_path, edit)


def _status(cli, project) -> dict:
    result = cli("-C", project.root, "status", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def ran_project(tiny_project, cli):
    _small(tiny_project)
    result = cli("-C", tiny_project.root, "run")
    assert result.exit_code == 0, result.stderr
    assert planner.build(tiny_project).todo() == []
    return tiny_project


def test_a_stage_never_consumes_clusters_of_replaced_features(ran_project, cli) -> None:
    def deeper(doc):
        doc["backbone"]["kwargs"]["depth"] = 2

    update_file(ran_project.config_path, deeper)
    assert cli("-C", ran_project.root, "extract", "--force").exit_code == 0
    refused = cli("-C", ran_project.root, "adapt", "--k", "2", "--force")
    assert refused.exit_code == 1
    assert "pseudo-labels at k=2" in refused.stderr and "stale" in refused.stderr
    assert "grappa cluster --k 2 --force" in refused.stderr
    status = {a["id"]: a["state"] for a in _status(cli, ran_project)["artifacts"]}
    assert status["clusters/k2"] == "stale" and status["adaptors/k2"] == "stale"
    assert status["fusion/avg"] == "stale" and status["results/fused-avg/shapes"] == "stale"
    assert status["results/backbone/shapes"] == "stale"
    fuse = cli("-C", ran_project.root, "fuse", "--strategy", "avg", "--force")
    assert fuse.exit_code == 1 and "adaptor set k2" in fuse.stderr
    assert cli("-C", ran_project.root, "cluster", "--k", "2", "--force").exit_code == 0
    assert cli("-C", ran_project.root, "adapt", "--k", "2", "--force").exit_code == 0


def test_status_sees_missing_results_and_says_eval(ran_project, cli) -> None:
    for path in list(ran_project.results_dir.glob("*/*.json"))[:2]:
        path.unlink()
    doc = _status(cli, ran_project)
    missing = [a["id"] for a in doc["artifacts"] if a["state"] == "missing"]
    assert len(missing) == 2 and all(m.startswith("results/") for m in missing)
    assert doc["next"][0].startswith("run `grappa eval`")
    again = cli("-C", ran_project.root, "run", "--json")
    done = {s["stage"]: s["done"] for s in json.loads(again.stdout)["stages"]}
    assert len(done["eval"]) == 2 and not done["adapt"] and not done["fuse"]


def test_status_sees_a_half_finished_adapt(ran_project, cli) -> None:
    path = ran_project.adaptors_dir / "k2.safetensors"
    path.unlink()
    (ran_project.runs_dir / "adapt-k2").mkdir(parents=True, exist_ok=True)  # what a killed adapt leaves
    doc = _status(cli, ran_project)
    states = {a["id"]: a["state"] for a in doc["artifacts"]}
    assert states["adaptors/k2"] == "partial"
    assert states["fusion/avg"] == "stale"  # its input is gone: not "Next: fuse" with what is left
    assert doc["next"][0].startswith("run `grappa adapt`")


def test_status_sees_image_edits_and_a_new_backbone(ran_project, cli) -> None:
    images = sorted(Path(ran_project.config().tasks["shapes"].root).rglob("*.png"))
    time.sleep(0.01)
    images[0].touch()
    doc = _status(cli, ran_project)
    assert "Everything is up to date" not in json.dumps(doc)
    stale = [a for a in doc["artifacts"] if a["state"] == "stale"]
    assert any(a["id"].startswith("features/") and "images changed" in a["detail"] for a in stale)
    assert doc["next"][0].startswith("run `grappa extract`")
    announced = {n.id for n in planner.build(ran_project).todo()}
    again = cli("-C", ran_project.root, "run", "--json")
    assert again.exit_code == 0, again.stderr
    done = {s["stage"]: s["done"] for s in json.loads(again.stdout)["stages"]}
    assert set(done["extract"]) <= announced and done["extract"]

    def other(doc):
        doc["backbone"]["name"] = "vit_tiny_patch16_224"

    update_file(ran_project.config_path, other)
    states = {a["id"]: a for a in _status(cli, ran_project)["artifacts"]}
    assert states["features/train"]["state"] == "stale" and "backbone changed" in states["features/train"]["detail"]


def test_status_text_says_up_to_date_only_when_run_has_nothing_to_do(ran_project, cli) -> None:
    assert "Everything is up to date" in cli("-C", ran_project.root, "status").stdout

    def more(doc):
        doc["adapt"]["epochs"] = 2

    update_file(ran_project.config_path, more)
    text = cli("-C", ran_project.root, "status").stdout
    assert "Everything is up to date" not in text and "grappa adapt" in text
    announced = {n.id for n in planner.build(ran_project).todo()}
    assert announced == {"adaptors/k2", "fusion/avg", "results/adaptor-k2/shapes", "results/fused-avg/shapes",
                         "reports/table2"}
    again = cli("-C", ran_project.root, "run", "--json")
    done = {s["stage"]: s["done"] for s in json.loads(again.stdout)["stages"]}
    assert done["adapt"] == ["k2"] and done["fuse"] == ["avg"] and not done["cluster"]
    assert "Everything is up to date" in cli("-C", ran_project.root, "status").stdout


def test_status_names_other_compute_conditions_only_where_they_change_numbers(ran_project, cli,
                                                                              monkeypatch) -> None:
    """A result made with another CPU thread count says so (its last digits would differ on a rerun);
    the same count says nothing, and the artifact stays complete either way (it is not stale)."""
    from grappa_cli.records import artifacts

    made_with = artifacts.read_checkpoint_record(ran_project.adaptors_dir / "k2.safetensors")["compute"]["threads"]
    monkeypatch.setenv("OMP_NUM_THREADS", str(made_with))
    doc = _status(cli, ran_project)
    assert not any("CPU thread" in a["detail"] for a in doc["artifacts"])
    monkeypatch.setenv("OMP_NUM_THREADS", str(made_with + 3))
    doc = _status(cli, ran_project)
    k2 = next(a for a in doc["artifacts"] if a["id"] == "adaptors/k2")
    assert k2["state"] == "complete"
    assert f"made with {made_with} CPU thread(s), this machine runs {made_with + 3}" in k2["detail"]


def test_status_beside_a_working_run_says_running_with_its_pid_and_progress(ran_project, cli) -> None:
    """While a process holds the project lock, a partial artifact is being made, not interrupted."""
    import os

    path = ran_project.adaptors_dir / "k2.safetensors"
    path.unlink()
    run_dir = ran_project.runs_dir / "adapt-k2"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "step", "epoch": 2, "step": 17, "loss": 1.0}) + "\n")
    assert _states(cli, ran_project)["adaptors/k2"] == "partial"  # nobody holds the lock: interrupted
    with ran_project.lock("run"):
        doc = _status(cli, ran_project)
    k2 = next(a for a in doc["artifacts"] if a["id"] == "adaptors/k2")
    assert k2["state"] == "running"
    assert f"pid {os.getpid()} (`grappa run`" in k2["detail"] and "epoch 3, step 17" in k2["detail"]
    assert ran_project.lock_holder() is None  # released again; status took nothing from the writer
    assert _states(cli, ran_project)["adaptors/k2"] == "partial"


def _states(cli, project) -> dict[str, str]:
    return {a["id"]: a["state"] for a in _status(cli, project)["artifacts"]}
