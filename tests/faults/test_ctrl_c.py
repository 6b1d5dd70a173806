"""Ctrl-C: one line, exit 130, no worker or event-loop tracebacks; the same command then resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from grappa_cli.storage import faults
from tests.conftest import copy_project

MESSAGE = "Error: interrupted; rerun the same command to resume."


def _first_chunk_write(project, tmp_path) -> int:
    """The number of the first embedding-chunk write of `extract` (DataLoader workers are busy then)."""
    probe = copy_project(project, tmp_path / "probe")
    from grappa_cli.cli.app import main

    writes: list[str] = []
    with faults.arm(None, record=writes):
        try:
            main(["-C", str(probe.root), "extract", "--split", "train"])
        except SystemExit as exc:
            assert not exc.code
    return next(i for i, w in enumerate(writes, 1) if "/embeddings/c/" in w)


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_ctrl_c_with_workers_prints_one_line_and_exits_130(tiny_project, tmp_path, terminal) -> None:
    at = _first_chunk_write(tiny_project, tmp_path)
    ready = tmp_path / "ready"
    env = {**os.environ, "GRAPPA_PROGRESS": "0", faults.ENV: f"{at}:pause", "GRAPPA_FAULT_READY": str(ready)}
    args = [sys.executable, "-m", "grappa_cli", "-C", str(tiny_project.root), "extract", "--split", "train",
            "--workers", "2"]
    if terminal:
        import pty

        master, slave = pty.openpty()
        proc = subprocess.Popen(args, env=env, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
    else:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    deadline = time.monotonic() + 180
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists(), "the extract never reached its first chunk"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    if terminal:
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=60)
        os.close(master)
        stderr = b"".join(chunks).decode(errors="replace")
    else:
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stderr)  # a terminal gets colours
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    assert lines == [MESSAGE], stderr

    from tests.conftest import run_subprocess

    resumed = run_subprocess("-C", tiny_project.root, "extract", "--split", "train")
    assert resumed.returncode == 0, resumed.stderr
    store = tiny_project.store(mode="r")
    assert store.provenance("features/train")["complete"]
    assert np.asarray(store.read("features/train/valid")).all()


def test_ctrl_c_in_process_is_the_same_line(tiny_project, cli) -> None:
    with faults.arm(3, "interrupt"):
        result = cli("-C", tiny_project.root, "extract", "--split", "train")
    assert result.exit_code == 130
    assert [line for line in result.stderr.splitlines() if line.strip()] == [MESSAGE]
