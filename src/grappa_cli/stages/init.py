"""Create a new project directory with a documented ``grappa.toml`` and an empty store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from grappa_cli import config as config_mod
from grappa_cli.errors import GrappaError, UsageError
from grappa_cli.fsutil import atomic_write_text
from grappa_cli.project import SUBDIRS, Project, is_project


def parse_task_args(values: list[str]) -> dict[str, dict[str, str]]:
    """``["cub=/data/CUB"]`` -> ``{"cub": {"root": "/data/CUB"}}``."""
    tasks: dict[str, dict[str, str]] = {}
    for value in values:
        name, sep, root = value.partition("=")
        if not sep or not name.strip() or not root.strip():
            raise UsageError(f"--task expects NAME=ROOT, got {value!r}", hint="e.g. --task cub=/data/CUB_200_2011")
        tasks[name.strip()] = {"root": str(Path(root.strip()).expanduser().resolve())}
    return tasks


def create_project(
    directory: Path, *, backbone: str | None = None, weights: Path | None = None,
    tasks: list[str] | None = None, force: bool = False,
) -> Project:
    """Create (or with ``force`` re-configure) a project; on any failure nothing is left behind."""
    root = directory.expanduser().resolve()
    if is_project(root) and not force:
        raise GrappaError(f"{root} already holds a grappa project", hint="pass --force to rewrite its grappa.toml")
    if root.exists() and not root.is_dir():
        raise GrappaError(f"{root} exists and is not a directory", hint="choose another path")
    existing_parent = root
    while not existing_parent.exists():
        existing_parent = existing_parent.parent
    if not os.access(existing_parent, os.W_OK | os.X_OK):
        raise GrappaError(f"cannot write to {existing_parent}: permission denied",
                          hint="choose a writable directory")

    overrides: dict[str, dict] = {}
    if backbone:
        overrides["backbone"] = {"name": backbone}
    if weights:
        overrides.setdefault("backbone", {})["weights"] = str(weights.expanduser().resolve())
    data = {section: dict(values) for section, values in overrides.items()}
    data["tasks"] = parse_task_args(tasks or [])
    config = config_mod.from_dict(data, root / config_mod.CONFIG_NAME)
    text = config_mod.render(config)

    if is_project(root):  # --force on an existing project: not while another command works in it
        with Project(root).lock("init --force"):
            config_path = root / config_mod.CONFIG_NAME
            atomic_write_text(root / f"{config_mod.CONFIG_NAME}.bak", config_path.read_text())
            _write_layout(root, text)
        return Project(root)
    _write_layout(root, text)
    return Project(root)


def _write_layout(root: Path, text: str) -> None:
    """The folders, the empty store and ``grappa.toml``; on failure, remove what was created."""
    created: list[Path] = []
    try:
        if not root.exists():
            root.mkdir(parents=True)
            created.append(root)
        for sub in SUBDIRS:
            path = root / sub
            if not path.exists():
                path.mkdir()
                created.append(path)
        import zarr

        zarr.open_group(str(root / "store.zarr"), mode="a")
        atomic_write_text(root / config_mod.CONFIG_NAME, text)
    except OSError as exc:
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)
        raise GrappaError(f"cannot create the project in {root}: {exc.strerror or exc}",
                          hint="choose a writable directory") from None
