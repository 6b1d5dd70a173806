"""File modes and fsync, `init --force`, plugin names checked first, and the divergence hint."""

from __future__ import annotations

import os
import re
import stat

import pytest
import torch

from grappa_cli.storage import fsutil


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask) -> None:
    from grappa_cli.model.checkpoint import _write
    from grappa_cli.setup.init import create_project

    old = os.umask(umask)
    try:
        project = create_project(tmp_path / "proj")
        fsutil.atomic_write_text(tmp_path / "report.md", "x")
        _write(tmp_path / "model.safetensors", {"w": torch.zeros(2)}, {})
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for path in (project.config_path, tmp_path / "report.md", tmp_path / "model.safetensors"):
        assert _mode(path) == want, (path, oct(_mode(path)))


def test_every_file_is_flushed_to_disk_before_its_rename(tmp_path, monkeypatch) -> None:
    from grappa_cli.model.checkpoint import _write

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _write(tmp_path / "a.safetensors", {"w": torch.ones(3)}, {})
    fsutil.atomic_write_text(tmp_path / "b.txt", "b")
    replaced = [src for kind, src in events if kind == "replace"]
    assert len(replaced) == 2
    for src in replaced:
        synced = events.index(("fsync", src))
        assert synced < events.index(("replace", src))


def test_init_force_waits_for_the_lock_and_keeps_a_backup(tiny_project, cli) -> None:
    before = tiny_project.config_path.read_text()
    with tiny_project.lock("run"):
        refused = cli("init", tiny_project.root, "--force")
    assert refused.exit_code == 1 and "locked" in refused.stderr
    assert tiny_project.config_path.read_text() == before
    done = cli("init", tiny_project.root, "--force")
    assert done.exit_code == 0, done.stderr
    assert (tiny_project.root / "grappa.toml.bak").read_text() == before
    assert tiny_project.config_path.read_text() != before  # defaults again


def test_unknown_plugin_names_fail_before_any_work(tiny_project, cli) -> None:
    from grappa_cli.config import update_file

    def bogus(doc):
        doc["fuse"]["strategies"] = ["avg", "bogus"]

    update_file(tiny_project.config_path, bogus)
    result = cli("-C", tiny_project.root, "run")
    assert result.exit_code == 1
    line = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(line) == 1 and "[fuse] strategies" in line[0] and "'bogus'" in line[0], result.stderr
    assert "avg" in line[0]  # the installed ones are listed
    store = tiny_project.store(mode="r")
    assert not store.exists("features/train")  # nothing was extracted


def test_divergence_hints_name_settings_their_section_accepts() -> None:
    from grappa_cli.config import SCHEMA
    from grappa_cli.train.epoch import divergence_hint

    for run, section in (("fuse-neighbor", "fuse"), ("adapt-k256", "adapt")):
        hint = divergence_hint(run)
        named = re.findall(r"\[(\w+)\] (\w+)", hint)
        assert named and all(s == section for s, _ in named), hint
        accepted = {spec.name for spec in SCHEMA[section]}
        assert {key for _, key in named} <= accepted, (hint, accepted)
    assert "grad_clip" not in divergence_hint("fuse-avg")
