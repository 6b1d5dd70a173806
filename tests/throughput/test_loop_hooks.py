"""The training loop's batch hooks: a dataset's own batch order, and batches prepared on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from grappa_cli.train.loop import TrainConfig, train
from grappa_cli.train.objective import Objective
from tests.train.train_toys import StripesDataset, make_vit_objective


class Interrupted(RuntimeError):
    pass


class Indexed(Dataset):
    """``(image, label, index)`` of a :class:`StripesDataset` (to see which items a batch held)."""

    def __init__(self, base: StripesDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, label, i


class Recording(Objective):
    """The toy ViT objective on ``(images, labels)``; remembers the indices of every batch."""

    def __init__(self, seed: int = 0) -> None:
        toy = make_vit_objective(seed)
        super().__init__(toy.model, toy.criterion)
        self.seen: list[list[int]] = []

    def forward(self, batch):
        images, labels, indices = batch
        self.seen.append(indices.tolist())
        return super().forward((images, labels))


class ReversedBatches:
    """Batches of consecutive positions, last batch first, shifted by the epoch; records its calls."""

    calls: list[tuple] = []

    def __init__(self, size: int, batch_size: int) -> None:
        self.size, self.batch_size, self.epoch = size, batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        ReversedBatches.calls.append(("set_epoch", epoch))

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self):
        order = [(p + self.epoch) % self.size for p in range(self.size)]
        batches = [order[i : i + self.batch_size] for i in range(0, len(self) * self.batch_size, self.batch_size)]
        return iter(reversed(batches))


def _config(run_dir: Path, epochs: int, **kw) -> TrainConfig:
    return TrainConfig(run_dir=run_dir, epochs=epochs, batch_size=8, settings={"lr": 1e-2}, **kw)


def _adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def test_a_batch_sampler_factory_decides_the_batches(tmp_path) -> None:
    ReversedBatches.calls = []

    def factory(dataset, *, batch_size, seed, rank, world_size):
        ReversedBatches.calls.append(("factory", len(dataset), batch_size, seed, rank, world_size))
        return ReversedBatches(len(dataset), batch_size)

    objective = Recording()
    result = train(objective, Indexed(StripesDataset(per_class=5)), _config(tmp_path / "run", 2, seed=3),
                   make_optimizer=_adam, make_batch_sampler=factory)
    assert ReversedBatches.calls == [("factory", 20, 8, 3, 0, 1), ("set_epoch", 0),
                                     ("factory", 20, 8, 3, 0, 1), ("set_epoch", 1)]
    assert objective.seen == [list(range(8, 16)), list(range(8)),  # epoch 0: two full batches, reversed
                              [(p + 1) % 20 for p in range(8, 16)], [(p + 1) % 20 for p in range(8)]]
    assert result.steps == 4


def _noisy(log: list | None = None):
    """A prepare_batch that adds generator noise and records what it was given."""

    def prepare(batch, device, generator):
        images, labels = batch
        if log is not None:
            log.append({"device": images.device, "device_arg": device, "grad": torch.is_grad_enabled(),
                        "generator": generator.get_state().clone()})
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        return images + 0.1 * noise, labels

    return prepare


def test_prepare_batch_runs_on_the_device_without_gradients(tmp_path) -> None:
    log: list[dict] = []
    train(make_vit_objective(0), StripesDataset(per_class=4), _config(tmp_path / "run", 2),
          make_optimizer=_adam, prepare_batch=_noisy(log))
    assert len(log) == 4  # 16 items, batches of 8, 2 epochs
    assert all(e["device"] == torch.device("cpu") == e["device_arg"] and not e["grad"] for e in log)
    # one generator per epoch, seeded afresh: the first batches of two epochs start from different states,
    # the second batch of an epoch continues where the first left off
    assert not torch.equal(log[0]["generator"], log[2]["generator"])
    assert not torch.equal(log[0]["generator"], log[1]["generator"])

    again: list[dict] = []
    train(make_vit_objective(0), StripesDataset(per_class=4), _config(tmp_path / "again", 2),
          make_optimizer=_adam, prepare_batch=_noisy(again))
    assert all(torch.equal(a["generator"], b["generator"]) for a, b in zip(log, again, strict=True))


def test_resume_with_prepared_batches_and_own_batch_order_is_exact(tmp_path) -> None:
    def factory(dataset, *, batch_size, seed, rank, world_size):
        return ReversedBatches(len(dataset), batch_size)

    def run(run_dir: Path, **kw):
        return train(make_vit_objective(0), StripesDataset(per_class=6, noise=0.05), _config(run_dir, 3),
                     make_optimizer=_adam, prepare_batch=_noisy(), make_batch_sampler=factory, **kw)

    reference = run(tmp_path / "ref")

    def stop(epoch, module, record):
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(tmp_path / "run", on_epoch_end=stop)
    resumed = run(tmp_path / "run")
    assert resumed.start_epoch == 2 and resumed.epoch_losses == reference.epoch_losses
    for key, value in reference.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key
