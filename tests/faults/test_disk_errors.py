"""A full or read-only disk: one ``Error:`` line naming the disk and the space needed, exit 1,
nothing half-written, and the same command then resumes."""

from __future__ import annotations

import errno
import json

import numpy as np

from grappa_cli.storage import faults


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_full_disk_during_extract_is_one_line_and_the_rerun_resumes(tiny_project, cli) -> None:
    with faults.arm(None) as counting:
        clean = cli("-C", tiny_project.root, "extract", "--split", "train")
    assert clean.exit_code == 0, clean.stderr
    reference = tiny_project.store(mode="r").read("features/train/embeddings")
    tiny_project.store().delete("features/train")
    for at in (1, counting.count // 2):
        with faults.arm(at, "enospc") as plan:
            failed = cli("-C", tiny_project.root, "extract", "--split", "train")
        assert plan.fired
        assert failed.exit_code == 1
        lines = _error_lines(failed.stderr)
        assert len(lines) == 1, failed.stderr
        assert lines[0].startswith("Error: the disk holding ") and "is full" in lines[0]
        assert "MiB free" in lines[0] and "rerun the same command" in lines[0]
        assert "unexpected" not in lines[0] and "Traceback" not in failed.stderr
        record = tiny_project.store(mode="r").provenance("features/train")
        assert record is None or not record["complete"]
    resumed = cli("-C", tiny_project.root, "extract", "--split", "train")
    assert resumed.exit_code == 0, resumed.stderr
    assert np.array_equal(tiny_project.store(mode="r").read("features/train/embeddings"), reference)


def test_full_disk_message_names_the_space_this_step_needs(tiny_project, cli) -> None:
    with faults.arm(6, "enospc"):  # inside the group's arrays, after the step announced its size
        failed = cli("-C", tiny_project.root, "extract", "--split", "train")
    assert failed.exit_code == 1
    line = _error_lines(failed.stderr)[0]
    assert "this step writes about" in line and "free at least" in line
    assert str(tiny_project.root) in line


def test_read_only_disk_is_one_line(tiny_project, cli) -> None:
    with faults.arm(1, "erofs"):
        failed = cli("-C", tiny_project.root, "extract", "--split", "train")
    assert failed.exit_code == 1
    lines = _error_lines(failed.stderr)
    assert len(lines) == 1 and "read-only filesystem" in lines[0] and "unexpected" not in lines[0]


def test_message_without_a_file_name_names_the_project(tmp_path) -> None:
    from grappa_cli.storage import diskerrors

    diskerrors.set_root(tmp_path)
    diskerrors.expect(3 * 2**20)
    text = diskerrors.message(OSError(errno.ENOSPC, "No space left on device"))
    assert text is not None and str(tmp_path) in text and "3.0 MiB" in text
    assert diskerrors.message(OSError(errno.ENOENT, "missing")) is None


def test_fault_switch_from_the_environment(tiny_project) -> None:
    from tests.conftest import run_subprocess

    failed = run_subprocess("-C", tiny_project.root, "extract", "--split", "train", env={faults.ENV: "2:enospc"})
    assert failed.returncode == 1
    assert len(_error_lines(failed.stderr)) == 1, failed.stderr
    runs = (tiny_project.state_dir / "runs.jsonl")
    assert not runs.exists() or all(json.loads(x)["command"] != "extract" for x in runs.read_text().splitlines())
