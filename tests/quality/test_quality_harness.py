"""The quality harness (benchmarks/quality.py) on real images: its data splits and a --small run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import quality_data  # noqa: E402


def test_validation_classes_are_carved_from_training_classes() -> None:
    classes = [f"c{i:02d}" for i in range(10)]
    train = quality_data.training_classes(classes)
    test = quality_data.held_out_classes(classes, "test")
    val = quality_data.held_out_classes(classes, "val")
    assert train == classes[:5] and test == classes[5:]
    assert val == ["c03", "c04"] and set(val) <= set(train)  # never a test class
    assert not set(val) & set(test)


def test_val_split_writes_no_test_class(tmp_path: Path) -> None:
    counts = quality_data.write_task(tmp_path, "digits", 3, split="val")
    assert sorted(counts) == [f"digit_{d}" for d in range(5)]  # digits 0-4: the training classes
    assert sum(1 for _ in (tmp_path / "digits").rglob("*.png")) == 15


def test_a_copied_base_project_runs_with_the_current_defaults(tmp_path: Path) -> None:
    """A base project's ``grappa.toml`` written by an earlier version must not carry its defaults into a run."""
    import quality
    from grappa_cli.config import GrappaConfig, update_file
    from grappa_cli.setup.init import create_project

    project = create_project(tmp_path / "base")
    update_file(project.config_path, lambda doc: doc["fuse"].__setitem__("warm_steps", 0.9))  # a stale default
    update_file(project.config_path, lambda doc: doc["adapt"].__setitem__("replay", 0.0))
    assert project.config().fuse.warm_steps == 0.9

    settings = quality.Settings("test", "small", ["digits"], {"fuse.neighbors": 7}, ["avg"])
    quality.fresh_config(project)
    quality.configure(project, tmp_path / "data", settings, seed=3)
    config, default = project.config(), GrappaConfig.default()
    assert config.fuse.warm_steps == default.fuse.warm_steps != 0.9
    assert config.adapt.replay == default.adapt.replay != 0.0
    assert config.fuse.neighbors == 7 and config.runtime.seed == 3  # the harness's own settings still apply
    assert config.eval.tasks == ["digits"]


@pytest.mark.skipif(not quality_data.available("stamps"), reason="needs tuxpaint-stamps-default (.ci/run installs it)")
def test_coarse_stamps_are_the_fine_tasks_evaluated_images(tmp_path: Path) -> None:
    fine = quality_data.stamps_samples(10)
    coarse = quality_data.stamps_coarse_samples(10, split="test")
    evaluated = quality_data.held_out_classes(list(fine), "test")
    assert sorted(f for files in coarse.values() for f in files) == sorted(f for c in evaluated for f in fine[c])
    assert all(label == c.split("-")[0] for label, files in coarse.items() for c in evaluated
               if set(fine[c]) & set(files))


@pytest.mark.slow
@pytest.mark.skipif(not quality_data.available("stamps"), reason="needs tuxpaint-stamps-default (.ci/run installs it)")
def test_small_harness_runs_the_pipeline_and_prints_table2(tmp_path: Path) -> None:
    import quality

    out = quality.main(["--small", "--split", "val", "--seeds", "0", "--strategies", "avg,neighbor,route",
                        "--work", str(tmp_path)])
    agg, tasks = out["aggregate"], out["tasks"]
    assert tasks == ["digits", "photos", "stamps", "stamps-coarse"]
    singles = [row for row in agg if row.startswith("M + P")]
    assert len(singles) == 2 and {"backbone", "oracle", "fused:avg", "fused:neighbor"} <= set(agg)
    for task in tasks:
        rp = {row: agg[row][task]["r_precision"][0] for row in agg}
        assert all(0 <= v <= 100 for v in rp.values())
        assert rp["oracle"] == max(rp[row] for row in singles)  # the oracle is the best single set
    verdict = out["verdict"]
    expected = sum(agg["fused:neighbor"][t]["r_precision"][0] - agg["backbone"][t]["r_precision"][0]
                   for t in tasks) / len(tasks)
    assert verdict["N_minus_M_mean_RP"] == pytest.approx(expected)
    routed = sum(agg["fused:route"][t]["r_precision"][0] - agg["backbone"][t]["r_precision"][0]
                 for t in tasks) / len(tasks)
    assert verdict["R_minus_M_mean_RP"] == pytest.approx(routed)
    averaged = sum(agg["fused:avg"][t]["r_precision"][0] - agg["oracle"][t]["r_precision"][0]
                   for t in tasks) / len(tasks)
    assert verdict["A_minus_oracle_mean_RP"] == pytest.approx(averaged) and verdict["A_minus_avg_mean_RP"] == 0

    # the criteria study on the same project: each source's choice read off the evaluated single sets
    import routing_criteria

    studies = [routing_criteria.study_project(root, 50, 0, crops=False) for root in tmp_path.glob("run-val-*")]
    assert len(studies) == 1
    study = studies[0]
    assert study["sources"] == ["digits", "photos", "stamps"] and study["candidates"][-1] == "backbone"
    assert study["task_source"]["stamps-coarse"] == study["sources"].index("stamps")  # the same images
    for name in ("partition", "silhouette"):
        scores = study["scores"][name]
        assert len(scores) == 3 and all(row[-1] == 0.0 for row in scores)  # the backbone column
    assert "RP mean over the tasks" in routing_criteria.summarise(studies)


def test_seeds_run_at_once_fill_the_cores_but_never_exceed_the_seeds() -> None:
    import quality

    assert quality.job_count(0, seeds=3, cores=2) == 2  # one per core
    assert quality.job_count(0, seeds=1, cores=16) == 1  # never more than the seeds
    assert quality.job_count(4, seeds=3, cores=2) == 3  # an explicit count, capped by the seeds
    assert quality.job_count(1, seeds=3, cores=2) == 1  # in this process, one seed after the other
    assert quality.job_count(0, seeds=0, cores=2) == 1


def test_own_graph_loss_is_lower_where_neighbours_share_what_the_views_share() -> None:
    """The own-graph criterion: an embedding whose nearest neighbours come from the same cluster,
    with two views that agree, scores a lower held-out Barlow Twins loss than unstructured noise."""
    import numpy as np

    import routing_criteria

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32))
    owner = rng.integers(0, 8, size=200)
    first = centres[owner] + 0.1 * rng.normal(size=(200, 32))
    second = centres[owner] + 0.1 * rng.normal(size=(200, 32))
    noise_a, noise_b = rng.normal(size=(200, 32)), rng.normal(size=(200, 32))
    structured = routing_criteria.own_graph_loss(first, second, seed=0, repeats=2, steps=100, dims=(32, 8))
    unstructured = routing_criteria.own_graph_loss(noise_a, noise_b, seed=0, repeats=2, steps=100, dims=(32, 8))
    assert structured < unstructured
    # perfectly correlated, standardised pairs give a loss of 0 (the Barlow Twins target: identity)
    import torch

    z = torch.from_numpy(rng.normal(size=(64, 4)).astype(np.float32))
    total, on, off = routing_criteria.barlow_loss(z, z)
    assert float(on) == pytest.approx(4 * (63 / 64 - 1) ** 2, abs=1e-4)  # std is unbiased, the mean over n
    assert float(total) == pytest.approx(float(on) + 0.0051 * float(off))  # the default off-diagonal weight
