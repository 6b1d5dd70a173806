"""TensorBoard event files of training runs: the same numbers as metrics.jsonl, read back with TensorBoard's
own reader; resumed runs continue at the global steps; without tensorboard, training runs as before."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from grappa_cli.train import distributed, tensorboard_log
from grappa_cli.train.checkpoint import RunDir
from grappa_cli.train.loop import TrainConfig, TrainResult, train
from grappa_cli.train.optim.schedule import build_scheduler
from tests.train.train_toys import StripesDataset, make_conv_objective

pytest.importorskip("tensorboard")


def _curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar series of the run directory's event files, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    series = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        steps = [p.step for p in points]
        assert len(steps) == len(set(steps)), f"{tag}: a step drawn twice: {steps}"
        series[tag] = {p.step: p.value for p in points}
    return series


def _f32(value: float) -> float:
    """What an event file holds of a metrics value (TensorBoard scalars are float32)."""
    return float(torch.tensor(value, dtype=torch.float32))


def _assert_mirrors_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """The loss, lr, step time and epoch curves equal metrics.jsonl's records at their steps."""
    records = RunDir(run_dir).read_metrics()
    curves = _curves(run_dir)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert steps and epochs
    for tag, kind, field in [("loss", steps, "loss"), ("lr", steps, "lr"), ("step_time_s", steps, "step_time_s"),
                             ("epoch/loss", epochs, "loss"), ("epoch/seconds", epochs, "seconds")]:
        assert curves[tag] == {r["step"]: _f32(r[field]) for r in kind}, tag
    return curves


# -- the pipeline's own runs -------------------------------------------------------------------------------------


@pytest.fixture
def clustered(tiny_project, cli):
    """The tiny project, two blocks deep, two epochs per run, extracted and clustered at k = 2 and 3."""
    from grappa_cli.config import update_file

    def edit(doc):
        doc["backbone"]["kwargs"]["depth"] = 2
        doc["adapt"]["epochs"] = doc["fuse"]["epochs"] = 2

    update_file(tiny_project.config_path, edit)
    for args in (["extract"], ["cluster", "--k", "2,3"]):
        result = cli("-C", tiny_project.root, *args)
        assert result.exit_code == 0, result.stderr
    return tiny_project


def test_adapt_and_fuse_write_the_metrics_as_tensorboard_scalars(clustered, cli) -> None:
    for args in (["adapt"], ["fuse", "--strategy", "neighbor"]):
        result = cli("-C", clustered.root, *args)
        assert result.exit_code == 0, result.stderr
        assert "grappa-cli[tensorboard]" not in result.stderr
    runs = clustered.root / "checkpoints" / "runs"
    assert runs == clustered.runs_dir
    for name in ("adapt-k2", "adapt-k3"):
        assert list((runs / name).glob("events.out.tfevents.*")), name
        _assert_mirrors_metrics(runs / name)

    fuse_dir = runs / "fuse-neighbor"
    curves = _assert_mirrors_metrics(fuse_dir)
    records = RunDir(fuse_dir).read_metrics()
    attention = [r for r in records if r["kind"] == "attention"]
    assert [r["phase"] for r in attention] == ["start", "end", "end"] and attention[0]["sets"] == ["k2", "k3"]
    # taken before the first step and after each epoch's last one
    ends = {r["epoch"]: r["step"] for r in records if r["kind"] == "epoch"}
    assert len(ends) == 2 and 0 < ends[0] < ends[1]
    layers = {layer["layer"] for r in attention for layer in r["layers"]}
    assert layers == {0, 1}
    for record in attention:
        step = 0 if record["phase"] == "start" else ends[record["epoch"]]
        for layer in record["layers"]:
            index = layer["layer"]
            assert curves[f"attention/entropy/layer_{index}"][step] == _f32(layer["entropy"])
            for name, alpha in zip(["k2", "k3"], layer["mean_alpha"], strict=True):
                assert curves[f"attention/alpha/layer_{index}/{name}"][step] == _f32(alpha)
    # step 0 is Grappa-avg: both sets weigh 1/2 and the attention is uniform
    assert curves["attention/alpha/layer_1/k2"][0] == pytest.approx(0.5, abs=1e-6)
    assert curves["attention/entropy/layer_1"][0] == pytest.approx(1.0, abs=1e-6)

    # --force starts the run over at step 0: the old curves go with the old metrics
    old = set(fuse_dir.glob("events.out.tfevents.*"))
    assert cli("-C", clustered.root, "fuse", "--strategy", "neighbor", "--force").exit_code == 0
    assert not old & set(fuse_dir.glob("events.out.tfevents.*"))
    _assert_mirrors_metrics(fuse_dir)


def test_without_tensorboard_training_runs_and_says_once_how_to_get_the_curves(clustered, cli,
                                                                               monkeypatch) -> None:
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # `import tensorboard` raises ImportError
    monkeypatch.setattr(tensorboard_log, "_hinted", False)
    with pytest.raises(ImportError):
        import tensorboard  # noqa: F401

    first = cli("-C", clustered.root, "adapt")  # two runs, k2 and k3
    second = cli("-C", clustered.root, "fuse", "--strategy", "neighbor")
    assert first.exit_code == 0, first.stderr
    assert second.exit_code == 0, second.stderr
    hint = 'pip install "grappa-cli[tensorboard]"'
    assert (first.stderr + second.stderr).count(hint) == 1
    assert first.stderr.count(hint) == 1
    for name in ("adapt-k2", "adapt-k3", "fuse-neighbor"):
        run_dir = clustered.runs_dir / name
        assert [r for r in RunDir(run_dir).read_metrics() if r["kind"] == "epoch"], name
        assert not list(run_dir.glob("events.out.tfevents.*")), name


# -- resuming and ranks, on the training loop itself ---------------------------------------------------------


class Killed(RuntimeError):
    pass


def _run(run_dir: Path, *, epochs: int = 3, kill_at_batch: int | None = None, **kwargs) -> TrainResult:
    """A small conv model over 32 stripes (4 steps per epoch, each logged); ``kill_at_batch`` stops it
    in the middle of an epoch, after the steps before were logged, as a kill would."""
    batches = 0

    def prepare(batch, device, generator):
        nonlocal batches
        batches += 1
        if batches == kill_at_batch:
            raise Killed(f"killed at batch {batches}")
        return batch

    config = TrainConfig(run_dir=run_dir, epochs=epochs, batch_size=8, log_every=1, settings={"lr": 1e-2})
    return train(make_conv_objective(0), StripesDataset(per_class=8), config,
                 make_optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
                 make_scheduler=lambda opt, steps, n: build_scheduler(opt, "cosine", steps_per_epoch=steps, epochs=n),
                 prepare_batch=prepare, **kwargs)


def test_a_killed_and_resumed_run_continues_its_curves_at_the_global_steps(tmp_path) -> None:
    reference_dir = tmp_path / "reference"
    _run(reference_dir)
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        _run(run_dir, kill_at_batch=7)  # epoch 2 of 3: steps 5 and 6 were logged, then the kill
    killed = _curves(run_dir)
    assert sorted(killed["loss"]) == [1, 2, 3, 4, 5, 6]  # on disk although the process died
    time.sleep(1.1)  # event files sort by the second they were opened in, as separate processes' do

    resumed = _run(run_dir)
    assert resumed.start_epoch == 1
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # one per process, merged by TensorBoard
    curves = _assert_mirrors_metrics(run_dir)
    # the steps past the checkpoint that the killed process logged are hidden, as metrics.jsonl drops them,
    # and the curves go on at the same global steps as an uninterrupted run's, with the same values
    assert sorted(curves["loss"]) == list(range(1, 13))
    assert curves["loss"] == _curves(reference_dir)["loss"]
    assert curves["epoch/loss"] == {4: _f32(resumed.epoch_losses[0]), 8: _f32(resumed.epoch_losses[1]),
                                    12: _f32(resumed.epoch_losses[2])}


def test_a_finished_run_adds_no_event_file(tmp_path) -> None:
    _run(tmp_path / "run", epochs=1)
    files = sorted((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(files) == 1
    _run(tmp_path / "run", epochs=1)  # already complete: nothing trains
    assert sorted((tmp_path / "run").glob("events.out.tfevents.*")) == files


def test_only_rank_0_writes_event_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(distributed, "is_main", lambda: False)  # what every other rank sees
    _run(tmp_path / "run", epochs=1)
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_records_map_to_tags_at_their_global_steps() -> None:
    step = {"kind": "step", "epoch": 0, "step": 5, "loss": 1.5, "lr": 0.1, "images_per_s": 80.0,
            "step_time_s": 0.1, "time": 1.0}
    assert tensorboard_log.scalars(step, 3) == (5, [("loss", 1.5), ("lr", 0.1), ("step_time_s", 0.1),
                                                    ("images_per_s", 80.0)])
    attention = {"kind": "attention", "epoch": 1, "phase": "end", "sets": ["k16", "k256"],
                 "layers": [{"layer": 3, "q_norm": 2.0, "k_norm": 3.0, "logit_scale": None, "entropy": 0.9,
                             "mean_alpha": [0.25, 0.75]}]}
    at, pairs = tensorboard_log.scalars(attention, 12)
    assert at == 12 and dict(pairs) == {
        "attention/entropy/layer_3": 0.9, "attention/q_norm/layer_3": 2.0, "attention/k_norm/layer_3": 3.0,
        "attention/alpha/layer_3/k16": 0.25, "attention/alpha/layer_3/k256": 0.75}
    diverged = {"kind": "error", "epoch": 0, "step": 7, "loss": "nan", "time": 1.0}
    assert tensorboard_log.scalars(diverged, 6) == (7, [])
    assert tensorboard_log.scalars({"kind": "step", "step": 1, "loss": float("inf")}, 0) == (1, [])
