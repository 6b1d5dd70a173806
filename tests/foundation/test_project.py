"""Projects: init, discovery, config validation, status, the write lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grappa_cli import config as config_mod
from grappa_cli.errors import ConfigError, ProjectLocked, ProjectNotFound
from grappa_cli.project import Project, discover, write_lock
from tests.conftest import run_subprocess


def test_init_creates_layout(cli, tmp_path: Path) -> None:
    result = cli("init", tmp_path / "p")
    assert result.exit_code == 0, result.stderr
    root = tmp_path / "p"
    for name in ("grappa.toml", "store.zarr", "checkpoints", "results", "reports", ".grappa"):
        assert (root / name).exists(), name
    assert (root / "store.zarr" / "zarr.json").is_file()
    config = config_mod.load(root / "grappa.toml")
    assert config.backbone.name == "vit_small_patch16_224.dino"
    assert config.cluster.k == "auto"
    assert config.adapt.lr == 0.001 and config.fuse.lr == 0.5


def test_init_documents_every_field(tmp_path: Path, cli) -> None:
    cli("init", tmp_path / "p")
    text = (tmp_path / "p" / "grappa.toml").read_text()
    for section, specs in config_mod.SCHEMA.items():
        assert f"[{section}]" in text
        for spec in specs:
            assert spec.doc in text, f"{section}.{spec.name} undocumented"
    assert "Paper: 0.001 (section 4)" in text


def test_init_with_tasks_and_backbone(cli, tmp_path: Path) -> None:
    from tests.data.tasks.fake_datasets import make_cub

    data = make_cub(tmp_path / "data", ["001.A", "002.B"], per_class=2) / "CUB_200_2011"
    result = cli("init", tmp_path / "p", "--backbone", "vit_base_patch16_224.dino", "--task", f"cub={data}")
    assert result.exit_code == 0, result.stderr
    config = config_mod.load(tmp_path / "p" / "grappa.toml")
    assert config.backbone.name == "vit_base_patch16_224.dino"
    assert config.tasks["cub"].root == str(data) and config.tasks["cub"].type == "cub"
    assert config.data.train == ["cub"], "the given tasks (not the six MRT ones) form the training set"
    assert "Read task cub (type cub" in result.stdout and "train 1 classes / 2 images" in result.stdout


def test_init_checks_task_roots_at_once(cli, tmp_path: Path) -> None:
    missing = cli("init", tmp_path / "p", "--task", f"mydata={tmp_path / 'nowhere'}")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("Error:") and "nowhere does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) <= 2  # the message and its fix
    assert not (tmp_path / "p").exists(), "nothing is written when a task cannot be read"
    empty_cub = tmp_path / "empty"
    empty_cub.mkdir()
    wrong = cli("init", tmp_path / "p", "--task", f"cub={empty_cub}")
    assert wrong.exit_code == 1 and "CUB_200_2011" in wrong.stderr and not (tmp_path / "p").exists()


def test_init_refuses_existing_project(cli, tmp_path: Path) -> None:
    cli("init", tmp_path / "p")
    config_file = tmp_path / "p" / "grappa.toml"
    config_file.write_text(config_file.read_text() + "\n# my notes\n")
    before = config_file.read_text()
    result = cli("init", tmp_path / "p")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error:") and "--force" in result.stderr
    assert config_file.read_text() == before
    assert cli("init", tmp_path / "p", "--force").exit_code == 0
    assert "# my notes" not in config_file.read_text()


def test_init_bad_task_argument_is_usage_error(cli, tmp_path: Path) -> None:
    result = cli("init", tmp_path / "p", "--task", "cub")
    assert result.exit_code == 2
    assert "NAME=ROOT" in result.stderr
    assert not (tmp_path / "p").exists()


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A directory nobody, root included, can create entries in.

    Root ignores permission bits, so as root the directory is made immutable (chattr +i);
    otherwise plain permissions do.
    """
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        yield path
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        os.chmod(path, 0o555)
        yield path
        os.chmod(path, 0o755)


def test_init_in_read_only_directory_creates_nothing(cli, read_only_dir: Path) -> None:
    result = cli("init", read_only_dir / "p")
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("Error: cannot")
    assert "choose a writable directory" in result.stderr
    assert list(read_only_dir.iterdir()) == []


def test_init_inside_read_only_directory_itself(cli, read_only_dir: Path) -> None:
    result = cli("init", read_only_dir)
    assert result.exit_code == 1, result.stderr
    assert "choose a writable directory" in result.stderr
    assert list(read_only_dir.iterdir()) == []


def test_discovery_order(tmp_path: Path, monkeypatch) -> None:
    a = Project(tmp_path / "a")
    b = Project(tmp_path / "b")
    for p in (a, b):
        p.root.mkdir()
        p.config_path.write_text("")
    nested = a.root / "x" / "y"
    nested.mkdir(parents=True)
    monkeypatch.delenv("GRAPPA_PROJECT", raising=False)
    assert discover(cwd=nested).root == a.root
    monkeypatch.setenv("GRAPPA_PROJECT", str(b.root))
    assert discover(cwd=nested).root == b.root
    assert discover(a.root, cwd=nested).root == a.root


def test_discovery_failure_names_what_was_searched(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GRAPPA_PROJECT", raising=False)
    with pytest.raises(ProjectNotFound) as info:
        discover(cwd=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "--project" in message and "$GRAPPA_PROJECT" in message
    with pytest.raises(ProjectNotFound, match="does not exist"):
        discover(tmp_path / "missing")


def test_status_outside_project(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GRAPPA_PROJECT", raising=False)
    result = cli("status", cwd=tmp_path)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: not inside a grappa project")
    result = cli("-C", tmp_path / "nope", "status")
    assert result.exit_code == 1 and "does not exist" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[cluster]\nk = [256, -4]\n", "cluster.k: values must increase"),
        ("[cluster]\nk = [4096, 1024]\n", "cluster.k: values must increase strictly (got 1024 after 4096)"),
        ("[cluster]\nk = [1, 4]\n", "cluster.k: every k must be >= 2"),
        ("[cluster]\nk = \"lots\"\n", "cluster.k: must be a list of increasing integers or \"auto\""),
        ("[adapt]\nlr = \"fast\"\n", "adapt.lr: must be a number"),
        ("[adapt]\nepochs = 0\n", "adapt.epochs: must be > 0"),
        ("[adapt]\nepoch = 3\n", "adapt.epoch: unknown key (did you mean 'epochs'?)"),
        ("[adpat]\n", "[adpat]: unknown section (did you mean 'adapt'?)"),
        ("[data]\nfeature_dtype = \"int8\"\n", "data.feature_dtype: must be one of float16, float32"),
        ("[backbone]\npretrained = 1\n", "backbone.pretrained: must be true or false"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "grappa.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_corrupted_config_via_cli(cli, tmp_path: Path) -> None:
    cli("init", tmp_path / "p")
    path = tmp_path / "p" / "grappa.toml"
    path.write_text("[backbone\nname = ")
    result = cli("-C", tmp_path / "p", "status")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}: not valid TOML")
    assert "Traceback" not in result.stderr
    debug = run_subprocess("-C", tmp_path / "p", "status", env={"GRAPPA_DEBUG": "1"})
    assert "Traceback" in debug.stderr


def test_render_roundtrip_keeps_values(tmp_path: Path) -> None:
    config = config_mod.from_dict({"cluster": {"k": [256, 1024]}, "tasks": {"cub": {"root": "/d"}}})
    path = tmp_path / "grappa.toml"
    path.write_text(config_mod.render(config))
    again = config_mod.load(path)
    assert again.cluster.k == [256, 1024]
    assert again.tasks["cub"].root == "/d"
    assert again.to_dict() == config.to_dict()


def test_update_file_keeps_comments_and_refuses_bad_edits(tmp_path: Path) -> None:
    path = tmp_path / "grappa.toml"
    path.write_text(config_mod.render())
    path.write_text(path.read_text() + "# mine\n")

    def good(doc):
        doc["cluster"]["k"] = [8, 16]

    assert config_mod.update_file(path, good).cluster.k == [8, 16]
    assert "# mine" in path.read_text()
    before = path.read_text()

    def bad(doc):
        doc["cluster"]["k"] = [16, 8]

    with pytest.raises(ConfigError):
        config_mod.update_file(path, bad)
    assert path.read_text() == before


def test_status_json_on_fresh_project(cli, tmp_path: Path) -> None:
    cli("init", tmp_path / "p")
    result = cli("-C", tmp_path / "p", "status", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["root"] == str(tmp_path / "p")
    assert data["artifacts"][0] == {
        "stage": "extract", "id": "features/train", "state": "missing", "detail": "", "stale_inputs": [],
    }
    # nothing can be extracted before there are images to train on: status says how to add them
    assert not any("grappa extract" in step for step in data["next"])
    assert any("grappa task add NAME ROOT --train" in step for step in data["next"])


_HOLDER = """
import sys, time
from pathlib import Path
from grappa_cli.project import write_lock
with write_lock(Path(sys.argv[1]), "adapt"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_writer_fails_at_once_and_kill_leaves_no_stale_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".grappa" / "lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(ProjectLocked) as info, write_lock(lock, "cluster"):
            pass
        assert time.monotonic() - start < 1.0
        assert f"pid {holder.pid}" in str(info.value) and "grappa adapt" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with write_lock(lock, "cluster"):
        assert json.loads(lock.read_text())["command"] == "cluster"


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from grappa_cli.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'faiss', 'zarr', 'sklearn', 'numpy', 'tensorboard')\n"
        "               if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_version(cli) -> None:
    from grappa_cli import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"grappa {__version__}"
