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
    # a worker only for every MIN_ITEMS_PER_WORKER items (starting one costs an import of torch)
    assert runtime.MIN_ITEMS_PER_WORKER == 1000
    assert runtime.loader_workers(4, 100, items=999) == 0 and runtime.loader_workers(4, 100, items=2500) == 2
    small = torch.utils.data.TensorDataset(torch.zeros(10, 1))
    assert make_loader(small, batch_size=256, num_workers=4, device=torch.device("cpu")).num_workers == 0
    assert make_loader(small, batch_size=4, num_workers=4, device=torch.device("cpu")).num_workers == 0
    monkeypatch.setattr(runtime, "MIN_ITEMS_PER_WORKER", 1)
    assert make_loader(small, batch_size=4, num_workers=4, device=torch.device("cpu")).num_workers == 3


def test_cpu_thread_settings_are_the_cores_whatever_the_load(monkeypatch) -> None:
    """Passive OpenMP waits and one thread per usable core, the same on a quiet and a busy machine
    (the thread count orders the floating-point reductions); the user's own values win."""
    import os

    from grappa_cli.runtime import cpu_thread_settings

    seen = []
    for load in (0.0, 1.6, 7.0):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        seen.append(cpu_thread_settings({}, cores=2))
    assert seen == [{"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}] * 3
    assert cpu_thread_settings({}, cores=16)["OMP_NUM_THREADS"] == "16"
    assert cpu_thread_settings({"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "ACTIVE"}, cores=2) == {}


def test_records_say_how_many_threads_made_them() -> None:
    import platform

    import torch

    from grappa_cli.records.provenance import record

    rec = record("adapt", {"k": 2}, {})
    assert rec["compute"] == {"threads": torch.get_num_threads(), "machine": platform.machine()}


def test_the_cli_sets_them_before_torch_loads() -> None:
    import os
    import subprocess
    import sys

    code = ("import os, sys\nfrom grappa_cli.cli.app import main\ntry:\n    main(['--version'])\n"
            "except SystemExit:\n    pass\nprint(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'),"
            " 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    policy, threads, torch_loaded = done.stdout.split()[-3:]
    assert policy == "PASSIVE" and int(threads) >= 1 and torch_loaded == "False"


def test_cpu_inference_runs_large_batches_in_parts() -> None:
    """Same embeddings, in order, with at most CPU_PART images per forward (bounded memory)."""
    import torch

    from grappa_cli.pipeline.stages.embed import CPU_PART, forward_in_parts

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()
    sizes = []

    def model(x):
        sizes.append(len(x))
        return net(x)

    images = torch.randn(2 * CPU_PART + 7, 3, 12, 12)
    with torch.inference_mode():
        whole = net(images)
        parts = forward_in_parts(model, images)
    assert sizes == [CPU_PART, CPU_PART, 7]
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    sizes.clear()
    with torch.inference_mode():
        forward_in_parts(model, images[:CPU_PART])
    assert sizes == [CPU_PART]
