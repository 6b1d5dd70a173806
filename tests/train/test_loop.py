"""The shared training loop on a frozen tiny ViT with a trainable adaptor and a norm-softmax head."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch.utils.data import Dataset

from grappa_cli.console import RichReporter
from grappa_cli.errors import TrainingError
from grappa_cli.storage import fsutil
from grappa_cli.train.checkpoint import RunDir
from grappa_cli.train.loop import TrainConfig, TrainResult, train
from grappa_cli.train.objective import Objective
from grappa_cli.train.optim.schedule import build_scheduler
from tests.train.train_toys import StripesDataset, make_vit_objective


class Interrupted(RuntimeError):
    pass


def _run(
    run_dir: Path, epochs: int = 3, *, objective: Objective | None = None, dataset: Dataset | None = None,
    lr: float = 1e-2, **kwargs,
) -> TrainResult:
    config_keys = {"seed", "force", "grad_clip", "num_workers", "log_every", "batch_size"}
    config = TrainConfig(run_dir=run_dir, epochs=epochs, batch_size=kwargs.pop("batch_size", 8),
                         settings={"lr": lr}, **{k: kwargs.pop(k) for k in list(kwargs) if k in config_keys})
    return train(
        objective if objective is not None else make_vit_objective(0),
        dataset if dataset is not None else StripesDataset(per_class=8, noise=0.05),
        config,
        make_optimizer=kwargs.pop("make_optimizer", lambda params: torch.optim.Adam(params, lr=lr)),
        make_scheduler=lambda opt, steps, n: build_scheduler(opt, "cosine", steps_per_epoch=steps, epochs=n),
        **kwargs,
    )


def _interrupt_after(epoch_index: int):
    def on_epoch_end(epoch, module, record):
        if epoch == epoch_index:
            raise Interrupted(f"stopped after epoch {epoch + 1}")

    return on_epoch_end


def _epoch_records(run_dir: Path) -> list[dict]:
    return [r for r in RunDir(run_dir).read_metrics() if r["kind"] == "epoch"]


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_loss_goes_down_and_the_frozen_backbone_is_untouched(tmp_path):
    objective = make_vit_objective(0)
    frozen = {k: v.clone() for k, v in objective.model.backbone.state_dict().items()}
    adaptor_before = {k: v.clone() for k, v in objective.model.adaptor.state_dict().items()}
    dataset = StripesDataset(per_class=8, noise=0.05)
    result = _run(tmp_path / "run", epochs=5, objective=objective, dataset=dataset)

    assert result.epoch_losses[-1] < 0.3 * result.epoch_losses[0]
    with torch.no_grad():
        predicted = objective.criterion.logits(objective.model(dataset.images)).argmax(1)
    assert (predicted == dataset.labels).float().mean() > 0.9  # 4 classes: chance is 0.25
    for name, param in objective.model.backbone.named_parameters():
        assert torch.equal(param, frozen[name]), name
        assert param.grad is None, name
    assert any(not torch.equal(v, adaptor_before[k]) for k, v in objective.model.adaptor.state_dict().items())
    assert set(result.state_dict) == {"model.adaptor.0.weight", "model.adaptor.0.bias", "model.adaptor.2.weight",
                                      "model.adaptor.2.bias", "criterion.weight"}
    assert set(result.submodule_state("model")) == {"adaptor.0.weight", "adaptor.0.bias", "adaptor.2.weight",
                                                    "adaptor.2.bias"}
    assert result.steps == 5 * 4 and result.start_epoch == 0
    assert result.seconds > 0 and result.images_per_second > 0


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    reference = _run(tmp_path / "ref", epochs=3)

    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        _run(run_dir, epochs=3, on_epoch_end=_interrupt_after(0))
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = _run(run_dir, epochs=3)  # a fresh objective, as a new process would build

    assert resumed.start_epoch == 1
    _assert_same_state(resumed.state_dict, reference.state_dict)
    assert resumed.epoch_losses == reference.epoch_losses
    assert resumed.steps == reference.steps == 12
    records = _epoch_records(run_dir)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert [r["loss"] for r in records] == reference.epoch_losses


def test_resume_is_exact_with_spawned_workers_and_augmentation(tmp_path, monkeypatch):
    from grappa_cli import runtime

    monkeypatch.setattr(runtime, "MIN_ITEMS_PER_WORKER", 1)  # a worker even for this small dataset
    reference = _run(tmp_path / "ref", epochs=2, num_workers=1)
    with pytest.raises(Interrupted):
        _run(tmp_path / "run", epochs=2, num_workers=1, on_epoch_end=_interrupt_after(0))
    resumed = _run(tmp_path / "run", epochs=2, num_workers=1)
    _assert_same_state(resumed.state_dict, reference.state_dict)
    assert resumed.epoch_losses == reference.epoch_losses


def test_the_seed_changes_the_run(tmp_path):
    a = _run(tmp_path / "a", epochs=1, seed=0)
    b = _run(tmp_path / "b", epochs=1, seed=1)
    assert a.epoch_losses != b.epoch_losses


def test_a_finished_run_is_returned_without_training_again(tmp_path):
    first = _run(tmp_path / "run", epochs=2)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = _run(tmp_path / "run", epochs=2)
    assert again.start_epoch == 2 and again.epoch_losses == first.epoch_losses
    _assert_same_state(again.state_dict, first.state_dict)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == lines


class _NaNImages(Dataset):
    def __init__(self, base: StripesDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return image * float("nan"), label


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    base = StripesDataset(per_class=8)
    seen: dict[str, str] = {}

    def poison_second_epoch(epoch, module):
        if epoch == 1:
            seen["digest"] = fsutil.sha256_file(run_dir / "checkpoint.pt")
            return _NaNImages(base)
        return None

    with pytest.raises(TrainingError) as info:
        _run(run_dir, epochs=3, dataset=base, on_epoch_start=poison_second_epoch)
    message = str(info.value)
    assert "NaN" in message and "epoch 2, step 1" in message and "after epoch 1 is kept" in message
    assert "lower the learning rate" in message and "grad_clip" in message
    assert fsutil.sha256_file(run_dir / "checkpoint.pt") == seen["digest"]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert RunDir(run_dir).read_metrics()[-1]["kind"] == "error"


def test_other_settings_are_refused_until_forced(tmp_path):
    run_dir = tmp_path / "run"
    _run(run_dir, epochs=1, lr=1e-2)
    with pytest.raises(TrainingError, match=r"other settings \(lr \(0\.01 -> 0\.02\)\).*--force"):
        _run(run_dir, epochs=1, lr=2e-2)
    with pytest.raises(TrainingError, match="epochs"):
        _run(run_dir, epochs=2, lr=1e-2)
    forced = _run(run_dir, epochs=2, lr=2e-2, force=True)
    assert forced.start_epoch == 0 and len(forced.epoch_losses) == 2
    assert json.loads((run_dir / "run.json").read_text())["params"]["lr"] == 2e-2
    assert [r["epoch"] for r in _epoch_records(run_dir)] == [0, 1]


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _run(run_dir, epochs=1)
    digest = fsutil.sha256_file(run_dir / "checkpoint.pt")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(fsutil.os, "fsync", broken_fsync)
    # a new run with 2 epochs would be refused; resume the same settings from a copy instead
    with pytest.raises(OSError, match="disk full"):
        _run(tmp_path / "run2", epochs=1)
    assert not (tmp_path / "run2" / "checkpoint.pt").exists()
    monkeypatch.undo()

    with pytest.raises(Interrupted):
        _run(tmp_path / "run3", epochs=3, on_epoch_end=_interrupt_after(0))
    digest3 = fsutil.sha256_file(tmp_path / "run3" / "checkpoint.pt")
    monkeypatch.setattr(fsutil.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _run(tmp_path / "run3", epochs=3)  # epoch 2's checkpoint write fails
    monkeypatch.undo()
    assert fsutil.sha256_file(tmp_path / "run3" / "checkpoint.pt") == digest3
    assert not list((tmp_path / "run3").glob(".*.tmp"))
    assert fsutil.sha256_file(run_dir / "checkpoint.pt") == digest


class _Counting(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.calls = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        self.calls += 1
        return self.base[i]


def test_on_epoch_start_may_replace_the_dataset_for_one_epoch(tmp_path):
    base = _Counting(StripesDataset(per_class=8))
    replacement = _Counting(StripesDataset(per_class=4, seed=1))
    modules = []

    def swap_in_epoch_one(epoch, module):
        modules.append(module)
        return replacement if epoch == 1 else None

    _run(tmp_path / "run", epochs=3, dataset=base, on_epoch_start=swap_in_epoch_one)
    assert base.calls == 2 * 32  # epochs 0 and 2
    assert replacement.calls == 16  # 16 items, two batches of 8
    assert all(isinstance(m, Objective) for m in modules)
    assert [r["step"] for r in _epoch_records(tmp_path / "run")] == [4, 6, 10]


def test_gradient_clipping_bounds_the_update(tmp_path):
    objective = make_vit_objective(0)
    before = {k: v.clone() for k, v in objective.named_parameters() if v.requires_grad}
    _run(tmp_path / "run", epochs=1, objective=objective, batch_size=32, grad_clip=1e-3,
         make_optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
    change = torch.cat([(p.detach() - before[k]).flatten() for k, p in objective.named_parameters()
                        if p.requires_grad])
    assert change.norm().item() == pytest.approx(1e-3, rel=1e-3)  # one SGD step of the clipped gradient


def test_unusable_settings_are_refused_with_the_fix(tmp_path):
    with pytest.raises(TrainingError, match=r"fewer than one batch of 64.*at most 32"):
        _run(tmp_path / "a", epochs=1, batch_size=64)
    frozen = make_vit_objective(0)
    frozen.requires_grad_(False)
    with pytest.raises(TrainingError, match="no trainable parameters"):
        _run(tmp_path / "b", epochs=1, objective=frozen)


def test_progress_and_metrics_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPPA_PROGRESS", "1")
    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, width=200, force_terminal=False))
    with pytest.raises(Interrupted):
        _run(tmp_path / "run", epochs=2, log_every=2, reporter=reporter, on_epoch_end=_interrupt_after(0))
    _run(tmp_path / "run", epochs=2, log_every=2, reporter=reporter)
    text = buffer.getvalue()
    assert "train epoch 1/2" in text and "train epoch 2/2" in text
    assert "loss=" in text and "img/s" in text
    assert "Resuming train from" in text and "after epoch 1/2" in text
    records = RunDir(tmp_path / "run").read_metrics()
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    assert all({"epoch", "step", "loss", "lr", "images_per_s", "time"} <= set(r) for r in records)
    assert all(r["images_per_s"] > 0 and math.isfinite(r["loss"]) for r in records)
