"""Inference options: the compile switch and the host copies (CPU behaviour; the CUDA path needs a GPU)."""

from __future__ import annotations

import pytest
import torch

from grappa_cli.runtime import COMPILE_ENV, HostCopies, compile_requested, maybe_compile


@pytest.mark.parametrize(("value", "expected"), [("", False), ("0", False), ("no", False), ("1", True),
                                                  ("true", True), (" ON ", True)])
def test_compile_follows_the_environment_unless_asked(monkeypatch, value, expected) -> None:
    monkeypatch.setenv(COMPILE_ENV, value)
    assert compile_requested() is expected
    assert compile_requested(True) is True and compile_requested(False) is False


def test_without_compile_the_model_is_returned_as_is(monkeypatch) -> None:
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    model = torch.nn.Linear(3, 2)
    assert maybe_compile(model) is model


def test_host_copies_of_cpu_tensors_come_back_at_once_in_order() -> None:
    copies = HostCopies()
    a, b = torch.arange(6.0).view(2, 3), torch.ones(1, 3)
    first = copies.push(a, [0, 1])
    second = copies.push(b, [2])
    assert [tag for _, tag in first] == [[0, 1]] and [tag for _, tag in second] == [[2]]
    assert (first[0][0] == a.numpy()).all() and (second[0][0] == 1).all()
    assert copies.flush() == []


def test_loader_workers_are_not_started_for_nothing(monkeypatch) -> None:
    """One batch is decoded in the main process; never more workers than batches or usable cores."""
    import torch

    from grappa_cli import runtime
    from grappa_cli.data.images import make_loader

    monkeypatch.setattr(runtime, "usable_cpus", lambda: 2)
    assert runtime.loader_workers(4, 1) == 0 and runtime.loader_workers(4, 0) == 0
    assert runtime.loader_workers(0, 50) == 0
    assert runtime.loader_workers(4, 3) == 2 and runtime.loader_workers(1, 3) == 1
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 16)
    assert runtime.loader_workers(4, 3) == 3 and runtime.loader_workers(4, 100) == 4
    small = torch.utils.data.TensorDataset(torch.zeros(10, 1))
    assert make_loader(small, batch_size=256, num_workers=4, device=torch.device("cpu")).num_workers == 0
    assert make_loader(small, batch_size=4, num_workers=4, device=torch.device("cpu")).num_workers == 3
