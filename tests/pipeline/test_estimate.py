"""Time estimates of the remaining work, from rates the project measured on its own runs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_image_folder, make_tiny_project
from tests.pipeline.conftest import trained_on_one_domain


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    return trained_on_one_domain(tmp_path_factory.mktemp("estimate"))


def test_a_fresh_project_has_no_estimate(tmp_path) -> None:
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.estimate import estimate

    project = make_tiny_project(tmp_path / "p", make_image_folder(tmp_path / "img", n_classes=2, per_class=3))
    guess = estimate(project, project.config(), planner.build(project))
    assert guess.seconds == {} and "extract" in guess.unknown
    assert guess.line().startswith("no estimate yet")


def test_rates_come_from_the_records(ran) -> None:
    from grappa_cli.pipeline.estimate import measured
    from grappa_cli.records import artifacts

    project, _ = ran
    store = project.store(mode="r")
    rates = measured(project, store)
    train = store.provenance("features/train")
    assert train["embedded"] == train["images"] == 6 and train["seconds"] > 0
    rec = artifacts.record(project, "adaptors/k2")
    assert rates.adapt == pytest.approx(rec["seconds"] / (rec["epochs"] * rec["images"]))
    fused = artifacts.record(project, "fusion/neighbor")
    expected = fused["seconds"] / (len(fused["loss_curve"]) * fused["trained_on"]["images"] * 2)
    assert rates.fuse == pytest.approx(expected)
    assert rates.embed > 0 and rates.rough == []


def _with_a_task_added(ran, tmp_path):
    """A copy of the trained project with a training task added, its configuration and its plan."""
    import shutil

    from grappa_cli.pipeline import planner
    from grappa_cli.project import Project
    from grappa_cli.setup.tasks import add_task

    base, stripes = ran
    shutil.copytree(base.root, tmp_path / "project")
    project = Project(tmp_path / "project")
    add_task(project, "stripes", stripes, train=True)
    config = project.config()
    return project, config, planner.build(project, config)


def test_the_update_is_estimated_from_the_plan(ran, tmp_path) -> None:
    from grappa_cli.pipeline.estimate import estimate, measured

    project, config, plan = _with_a_task_added(ran, tmp_path)
    guess = estimate(project, config, plan)
    rates = measured(project, project.store(mode="r"))
    # (priced: from the rates alone; the project's recorded runs may calibrate `seconds`)
    # two new sets, each on the 5 added images and 5 replayed old ones ([adapt] replay = 1):
    # batch 8, one epoch of one step, 8 passes each
    assert guess.priced["adapt"] == pytest.approx(16 * rates.adapt)
    # 5 new training images and the 5 test images of the new task
    assert guess.priced["extract"] == pytest.approx(10 * rates.embed)
    # warm start: 0.4 of one epoch, at least one; 11 images, batch 8 -> 8 passes, 1 + 3 candidates
    assert guess.priced["fuse"] == pytest.approx(8 * 4 * rates.fuse)
    assert guess.priced["eval"] > 0 and guess.unknown == []
    assert guess.line().startswith("about ") and "from rates measured in this project" in guess.line()


def test_a_stage_not_run_yet_borrows_a_rough_rate(ran, tmp_path) -> None:
    """Before any set or fusion is trained, their rates come from the embedding rate: an
    adaptation pass as ADAPT_PER_EMBED embeddings, a fusion pass per candidate as FUSE_PER_ADAPT
    adaptation passes, both marked rough; a measured rate is never replaced."""
    import shutil

    from grappa_cli.pipeline.estimate import ADAPT_PER_EMBED, FUSE_PER_ADAPT, measured
    from grappa_cli.project import Project

    base, _ = ran
    shutil.copytree(base.root, tmp_path / "project")
    project = Project(tmp_path / "project")
    store = project.store(mode="r")
    full = measured(project, store)
    for path in project.fusion_dir.glob("*.safetensors"):
        path.unlink()
    no_fusion = measured(project, store)
    assert no_fusion.embed == full.embed and no_fusion.adapt == full.adapt
    assert no_fusion.fuse == pytest.approx(FUSE_PER_ADAPT * full.adapt) and no_fusion.rough == ["fuse"]
    for path in project.adaptors_dir.glob("*.safetensors"):
        path.unlink()
    nothing_trained = measured(project, store)
    assert nothing_trained.adapt == pytest.approx(ADAPT_PER_EMBED * full.embed)
    assert nothing_trained.fuse == pytest.approx(FUSE_PER_ADAPT * ADAPT_PER_EMBED * full.embed)
    assert nothing_trained.rough == ["adapt", "fuse"]


def test_a_fresh_run_estimates_the_rest_once_extraction_has_measured_the_backbone(tmp_path, cli) -> None:
    project = make_tiny_project(tmp_path / "p", make_image_folder(tmp_path / "img"))
    result = cli("-C", project.root, "run", "--until", "adapt")
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    first = said.index("Estimated time: no estimate yet")
    later = said.index("Estimated time of the remaining stages: about ")
    assert first < said.index("[1/3] extract") < later < said.index("[2/3] cluster")
    # a second run has rates from the start: one estimate, before it starts
    again = cli("-C", project.root, "run", "--until", "eval")
    assert again.exit_code == 0, again.stderr
    said = " ".join(again.stderr.split())
    assert "Estimated time: about " in said and "remaining stages" not in said
    # each run's record keeps what it announced, for the stages it runs (--until stops before the
    # others), beside the seconds each stage took
    first_record, second_record = [json.loads(line) for line in
                                   (project.state_dir / "runs.jsonl").read_text().splitlines()[-2:]]
    assert first_record["estimate"]["when"] == "after extract"
    assert set(first_record["estimate"]["seconds"]) == {"adapt"}
    assert first_record["estimate"]["rough"] == ["adapt"]  # no set trained yet: a borrowed rate
    assert second_record["estimate"]["when"] == "before the run"
    assert "eval" in second_record["estimate"]["seconds"]
    assert set(second_record["estimate"]["seconds"]) <= {"fuse", "eval"}  # the earlier stages are done
    assert [s["stage"] for s in first_record["stages"]] == ["extract", "cluster", "adapt"]
    seconds = {s["stage"]: s["seconds"] for s in first_record["stages"]}
    assert seconds["adapt"] > 0 and seconds["extract"] > 0 and seconds["cluster"] >= 0

def test_recorded_runs_calibrate_the_estimate(ran, tmp_path) -> None:
    """A priced stage is scaled by the latest run's actual over priced seconds (bounded), and a
    stage no rate prices (clustering, the report) counts the seconds it last took."""
    from grappa_cli.pipeline.estimate import CALIBRATION_BOUNDS, calibration, estimate

    project, config, plan = _with_a_task_added(ran, tmp_path)
    runs = project.state_dir / "runs.jsonl"
    runs.write_text("")
    raw = estimate(project, config, plan)
    assert raw.seconds == raw.priced and set(raw.priced) >= {"extract", "adapt", "eval"}

    def stage(name: str, seconds: float, done: bool = True) -> dict:
        return {"stage": name, "done": ["x"] if done else [], "skipped": [], "seconds": seconds}

    records = [
        # an older run: overwritten by the later one for adapt
        {"command": "run", "estimate": {"seconds": {"adapt": 99.0}, "priced": {"adapt": 10.0}},
         "stages": [stage("adapt", 10.0), stage("report", 9.0)]},
        {"command": "run", "estimate": {"when": "after extract", "seconds": {"adapt": 50.0, "eval": 4.0},
                                        "priced": {"adapt": 10.0, "eval": 4.0}},
         "stages": [stage("extract", 3.0), stage("cluster", 0.7), stage("adapt", 15.0), stage("eval", 40.0),
                    stage("fuse", 1.0, done=False), stage("report", 2.5)]},
        # a stage priced with a borrowed rate gives no ratio: the fusion's 3x is not learned
        {"command": "run", "estimate": {"seconds": {"fuse": 1.0}, "priced": {"fuse": 1.0}, "rough": ["fuse"]},
         "stages": [stage("fuse", 3.0)]},
        "not json",
    ]
    runs.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    learned = calibration(project)
    # ratios against what was priced, not what was announced; eval's 10x is bounded
    assert learned.ratio == {"adapt": pytest.approx(1.5), "eval": CALIBRATION_BOUNDS[1]}
    assert learned.last_seconds == {"cluster": 0.7, "report": 2.5}
    guess = estimate(project, config, plan)
    assert guess.priced == pytest.approx(raw.priced)
    assert guess.seconds["adapt"] == pytest.approx(1.5 * raw.priced["adapt"])
    assert guess.seconds["eval"] == pytest.approx(CALIBRATION_BOUNDS[1] * raw.priced["eval"])
    assert guess.seconds["extract"] == pytest.approx(raw.priced["extract"])  # never announced: as priced
    assert guess.seconds["cluster"] == 0.7 and guess.seconds["report"] == 2.5
    assert list(guess.seconds) == [s for s in ("extract", "cluster", "adapt", "fuse", "eval", "report")
                                   if s in guess.seconds]
