"""Training in real processes: a SIGKILL mid-epoch followed by a rerun, and torchrun with gloo."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grappa_cli.train.checkpoint import RunDir

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "GRAPPA_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def _assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigkill_in_the_middle_of_an_epoch_then_rerun_gives_identical_weights(tmp_path):
    script = [sys.executable, str(HERE / "run_toy_training.py")]
    marker = tmp_path / "epoch1.done"
    victim = subprocess.Popen([*script, str(tmp_path / "run"), str(tmp_path / "never.safetensors"),
                               "--kill-marker", str(marker)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the training process never finished epoch 1"
        time.sleep(0.01)
    time.sleep(0.3)  # epoch 2 loads 50 ms per image: this lands inside its first batches
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "never.safetensors").exists()

    rerun = subprocess.Popen([*script, str(tmp_path / "run"), str(tmp_path / "resumed.safetensors")],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from tests.train.run_toy_training import train_toy

    reference = train_toy(tmp_path / "ref")  # uninterrupted, in this process (one thread, as the script)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    _assert_equal_states(load_file(tmp_path / "resumed.safetensors"), reference.state_dict)
    epochs = [r for r in RunDir(tmp_path / "run").read_metrics() if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert [r["loss"] for r in epochs] == reference.epoch_losses
    if importlib.util.find_spec("tensorboard") is not None:
        # the TensorBoard curves: the killed process's steps past its checkpoint are hidden and the
        # rerun's continue at the same global steps, so TensorBoard draws what metrics.jsonl holds
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0}).Reload()
        drawn = [(e.step, e.value) for e in events.Scalars("epoch/loss")]
        assert drawn == [(r["step"], float(torch.tensor(r["loss"]))) for r in epochs]
        steps = [e.step for e in events.Scalars("loss")]
        assert steps == sorted(set(steps))


@pytest.mark.distributed
def test_torchrun_with_two_gloo_processes_matches_one_process(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "ddp_toy_training.py"), str(run_dir), str(out)]
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    states = [load_file(out / f"rank{r}.safetensors") for r in range(2)]
    _assert_equal_states(states[0], states[1])  # DDP keeps the replicas identical
    summaries = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["is_main"] for s in summaries] == [True, False]
    assert all(s["world_size"] == 2 and s["gathered"] == list(range(10)) for s in summaries)
    assert all(s["mean"] == 0.5 and s["broadcast"] == {"from": 0} for s in summaries)
    assert summaries[0]["epoch_losses"] == summaries[1]["epoch_losses"]

    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 2
    epochs = [r for r in RunDir(run_dir).read_metrics() if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]  # written by rank 0 only
    assert all(math.isfinite(r["loss"]) for r in epochs)
    if importlib.util.find_spec("tensorboard") is not None:  # the TensorBoard curves: rank 0's file only
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1

    # Two processes with 4 pairs each compute the same function as one process with 8:
    # global batch statistics in the loss and the projector, DDP averaging of gradients.
    from tests.train.ddp_toy_training import train_pairs

    single = train_pairs(tmp_path / "single")
    assert single.epoch_losses == pytest.approx(summaries[0]["epoch_losses"], rel=1e-4)
    for key, value in single.state_dict.items():
        assert torch.allclose(value, states[0][key], rtol=1e-4, atol=1e-6), key
