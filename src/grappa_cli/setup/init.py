"""Create a new project directory with a documented ``grappa.toml`` and an empty store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from grappa_cli import config as config_mod
from grappa_cli.errors import GrappaError, UsageError
from grappa_cli.project import SUBDIRS, Project, is_project
from grappa_cli.storage.fsutil import atomic_write_text

if TYPE_CHECKING:
    from grappa_cli.setup.tasks import TaskSummary


def parse_task_args(values: list[str]) -> dict[str, dict[str, str]]:
    """``["cub=/data/CUB", "mine=/photos"]`` -> ``{"cub": {"root": ...}, "mine": {"type": "imagefolder", ...}}``.

    A NAME that is a task reader (cub, cars, ...) reads that dataset; any other NAME reads an
    image folder (:func:`grappa_cli.setup.tasks.default_type`).
    """
    from grappa_cli.setup.tasks import default_type

    tasks: dict[str, dict[str, str]] = {}
    for value in values:
        name, sep, root = value.partition("=")
        name = name.strip()
        if not sep or not name or not root.strip():
            raise UsageError(f"--task expects NAME=ROOT, got {value!r}", hint="e.g. --task cub=/data/CUB_200_2011")
        if any(c in name for c in " .[]\"'"):
            raise UsageError(f"task name {name!r} must be a plain word (letters, digits, - or _)",
                             hint="e.g. --task mydata=/data/my_images")
        entry = {"root": str(Path(root.strip()).expanduser().resolve())}
        kind = default_type(name)
        if kind != name:
            entry = {"type": kind, **entry}
        tasks[name] = entry
    return tasks


def training_items(tasks: dict[str, dict[str, str]]) -> list[str] | None:
    """``data.train`` for the tasks given to ``init``: their names, or None (keep ``["mrt"]``).

    ``"mrt"`` stays when the given tasks include the six MRT datasets (the paper's setting);
    otherwise the project trains on the tasks it was given.
    """
    from grappa_cli.data.tasks.mrt import MRT_TASKS

    if not tasks:
        return None
    types = {entry.get("type", name) for name, entry in tasks.items()}
    return None if set(MRT_TASKS) <= types else list(tasks)


def create_project(
    directory: Path, *, backbone: str | None = None, weights: Path | None = None,
    tasks: list[str] | None = None, force: bool = False,
) -> Project:
    """Create (or with ``force`` re-configure) a project; on any failure nothing is left behind."""
    return initialise(directory, backbone=backbone, weights=weights, tasks=tasks, force=force)[0]


def initialise(
    directory: Path, *, backbone: str | None = None, weights: Path | None = None,
    tasks: list[str] | None = None, force: bool = False,
) -> tuple[Project, list[TaskSummary]]:
    """:func:`create_project`, also returning a summary of each task (read before anything is written)."""
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
    train = training_items(data["tasks"])
    if train is not None:
        data["data"] = {"train": train}
    config = config_mod.from_dict(data, root / config_mod.CONFIG_NAME)
    summaries = read_tasks(config)
    text = config_mod.render(config)

    if is_project(root):  # --force on an existing project: not while another command works in it
        with Project(root).lock("init --force"):
            config_path = root / config_mod.CONFIG_NAME
            atomic_write_text(root / f"{config_mod.CONFIG_NAME}.bak", config_path.read_text())
            _write_layout(root, text)
        return Project(root), summaries
    _write_layout(root, text)
    return Project(root), summaries


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


def read_tasks(config: config_mod.GrappaConfig) -> list[TaskSummary]:
    """Read every configured task now, so a wrong root or layout fails before anything is written."""
    from grappa_cli.data.sources import load_entry, task_root
    from grappa_cli.setup.tasks import summarise

    training = set(config.data.train)
    summaries = []
    for entry in config.tasks.values():
        summary = summarise(load_entry(config, entry), entry, task_root(config, entry))
        summary.in_training_set = entry.name in training
        summaries.append(summary)
    return summaries
