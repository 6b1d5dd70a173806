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
    """One thread per usable core, the same on a quiet and a busy machine (the thread count orders
    the floating-point reductions); the user's own values win."""
    import os

    from grappa_cli.runtime import cpu_thread_settings

    seen = []
    for load, others in ((0.0, 0), (1.6, 1), (7.0, 5)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        seen.append(cpu_thread_settings({}, cores=2, others=others)["OMP_NUM_THREADS"])
    assert seen == ["2", "2", "2"]
    assert cpu_thread_settings({}, cores=16, others=0)["OMP_NUM_THREADS"] == "16"
    assert cpu_thread_settings({"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "ACTIVE"}, cores=2) == {}
    assert cpu_thread_settings({"OMP_NUM_THREADS": "4", "GOMP_SPINCOUNT": "0"}, cores=2) == {}


def test_threads_spin_briefly_only_while_the_cores_are_free(monkeypatch) -> None:
    """Waiting threads spin SPIN_COUNT times when this process's threads and the machine's other
    runnable processes fit its cores, and sleep at once otherwise: beside busy processes, under
    torchrun, or where the load cannot be read."""
    import os

    from grappa_cli.runtime import SPIN_COUNT, cpu_thread_settings

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    spin = {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}

    def waits(environ: dict[str, str], cores: int, others: int | None) -> dict[str, str]:
        settings = cpu_thread_settings(environ, cores=cores, others=lambda: others)
        return {k: v for k, v in settings.items() if k != "OMP_NUM_THREADS"}

    assert waits({}, 2, 0) == spin and waits({}, 2, 2) == spin and waits({}, 4, 0) == spin
    assert waits({}, 2, 3) == passive and waits({}, 4, 1) == passive and waits({}, 2, None) == passive
    assert waits({"OMP_NUM_THREADS": "1"}, 4, 3) == spin  # the user's thread count is what runs
    assert waits({"WORLD_SIZE": "2"}, 2, 0) == passive and waits({"WORLD_SIZE": "two"}, 2, 0) == passive
    assert waits({"WORLD_SIZE": "1"}, 2, 0) == spin


def test_runnable_others_reads_the_machine_s_run_queue() -> None:
    """A CPU-bound child process counts as one runnable process besides this one."""
    import subprocess
    import sys
    import time

    from grappa_cli.runtime import runnable_others

    before = runnable_others()
    if before is None:
        pytest.skip("/proc/stat has no procs_running on this platform")
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        during = runnable_others(samples=10)
    finally:
        child.kill()
        child.wait()
    assert during is not None and during >= 1 and during >= before


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

    from grappa_cli.runtime import SPIN_COUNT

    code = ("import os, sys\nfrom grappa_cli.cli.app import main\ntry:\n    main(['--version'])\n"
            "except SystemExit:\n    pass\nprint(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'),"
            " os.environ.get('OMP_NUM_THREADS'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    policy, spin, threads, torch_loaded = done.stdout.split()[-4:]
    assert (policy, spin) in (("PASSIVE", "None"), ("None", str(SPIN_COUNT)))  # one of the two, by the load
    assert int(threads) >= 1 and torch_loaded == "False"


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
