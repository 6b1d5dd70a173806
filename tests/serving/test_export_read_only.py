"""``grappa export`` from a project it cannot write to leaves no output file behind."""

from __future__ import annotations

from grappa_cli.storage import faults


def test_export_that_cannot_log_leaves_no_file(fused_project, cli, tmp_path) -> None:
    out = tmp_path / "model.safetensors"
    with faults.arm(None, record=(writes := [])):
        ok = cli("-C", fused_project.root, "export", "adaptor:k2", tmp_path / "probe.safetensors")
    assert ok.exit_code == 0, ok.stderr
    log_write = next(i for i, w in enumerate(writes, 1) if w.endswith("runs.jsonl"))
    with faults.arm(log_write, "erofs") as plan:
        failed = cli("-C", fused_project.root, "export", "adaptor:k2", out)
    assert plan.fired.endswith("runs.jsonl")
    assert failed.exit_code == 1
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "read-only filesystem" in lines[0], failed.stderr
    assert not out.exists() and not list(tmp_path.glob(".model.safetensors.*"))
