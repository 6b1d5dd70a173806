"""Configure tasks (``grappa task add``) and summarise them (``grappa task list``).

Adding a task reads its dataset first (so a wrong root is reported before anything is
written), then writes ``[tasks.NAME]`` into ``grappa.toml`` keeping the user's comments.
"""

from __future__ import annotations

import contextlib
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grappa_cli.config import GrappaConfig, TaskEntry, update_file
from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.errors import GrappaError, UsageError
from grappa_cli.project import Project

if TYPE_CHECKING:
    from tomlkit import TOMLDocument


@dataclass
class SplitSummary:
    classes: int
    images: int


@dataclass
class TaskSummary:
    """What ``grappa task list`` shows for one configured task."""

    name: str
    type: str
    root: str
    options: dict[str, object] = field(default_factory=dict)
    train: SplitSummary | None = None
    test: SplitSummary | None = None
    in_training_set: bool = False
    evaluated: bool = False
    singleton_test_classes: list[str] = field(default_factory=list)
    error: str | None = None
    #: what the reader wants the user to know about how it read the folder (e.g. train/ + test/)
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_options(values: list[str]) -> dict[str, object]:
    """``["split=all-test", "k=3"]`` -> ``{"split": "all-test", "k": 3}`` (TOML values, else strings)."""
    options: dict[str, object] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(
                f"--option expects KEY=VALUE, got {value!r}", hint="e.g. --option split=all-test"
            )
        if key in ("type", "root"):
            raise UsageError(
                f"--option {key}=... is not an option", hint=f"use the {key.upper()} argument/--type"
            )
        try:
            options[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key] = raw.strip()
    return options


def summarise(splits: TaskSplits, entry: TaskEntry, root: Path) -> TaskSummary:
    test = splits.test
    return TaskSummary(
        name=entry.name,
        type=entry.type,
        root=str(root),
        options=dict(entry.options),
        train=SplitSummary(len(splits.train.classes), len(splits.train)),
        test=SplitSummary(len(test.classes), len(test)) if test is not None else None,
        singleton_test_classes=list(splits.info.get("singleton_test_classes", [])),
        note=splits.info.get("note"),
    )


def default_type(name: str) -> str:
    """The reader of a task added without ``--type``: NAME when a reader has that name, else imagefolder.

    ``grappa task add cub ROOT`` reads CUB; ``grappa task add mydata ROOT`` reads a folder of
    class folders (or ``train/`` + ``test/``), the layout most users' own images have.
    """
    from grappa_cli import plugins

    return name if name in plugins.registry("tasks").items else "imagefolder"


def training_after_adding(config: GrappaConfig, names: list[str]) -> list[str]:
    """``data.train`` once ``names`` join the training set.

    The default ``["mrt"]`` is replaced unless the six MRT tasks are all configured (else it
    could never be read); otherwise the names are appended (each once).
    """
    from grappa_cli.data.sources import MRT, mrt_members

    current = list(config.data.train)
    if MRT in current:
        try:
            mrt_members(config)
        except GrappaError:
            current = [item for item in current if item != MRT]
    return current + [n for n in names if n not in current]


def add_task(
    project: Project,
    name: str,
    root: Path,
    *,
    task_type: str | None = None,
    options: dict[str, object] | None = None,
    force: bool = False,
    train: bool = False,
) -> TaskSummary:
    """Validate a task by reading it, then write ``[tasks.NAME]`` into ``grappa.toml``.

    ``train``: also put it in the training set D (``data.train``, see
    :func:`training_after_adding`) and, when ``eval.tasks`` lists tasks, among them.
    """
    from grappa_cli.data.sources import load_entry

    name = name.strip()
    if not name or any(c in name for c in " .[]\"'"):
        raise UsageError(f"task name {name!r} must be a plain word (letters, digits, - or _)")
    config = project.config()
    if name in config.tasks and not force:
        raise GrappaError(
            f"task {name!r} is already configured (root {config.tasks[name].root})",
            hint="pass --force to replace it",
        )
    entry = TaskEntry(name, task_type or default_type(name), str(Path(root).expanduser().resolve()),
                      dict(options or {}))
    splits = load_entry(config, entry)
    if train:
        config.tasks[name] = entry
        new_train = training_after_adding(config, [name])
        has_test = splits.test is not None and len(splits.test) > 0
        new_eval = list(config.eval.tasks) + ([name] if config.eval.tasks and has_test and
                                               name not in config.eval.tasks else [])

    def write(doc: TOMLDocument) -> None:
        import tomlkit

        if "tasks" not in doc:
            doc.add("tasks", tomlkit.table(is_super_table=True))
        tasks = doc["tasks"]
        if name in tasks:
            del tasks[name]
        table = tomlkit.table()
        if entry.type != name:
            table["type"] = entry.type
        table["root"] = entry.root
        for key, value in entry.options.items():
            table[key] = value
        tasks[name] = table
        if train:
            if "data" not in doc:
                doc.add("data", tomlkit.table())
            doc["data"]["train"] = new_train
            if new_eval != list(config.eval.tasks):
                doc["eval"]["tasks"] = new_eval

    with project.lock("task add"):
        update_file(project.config_path, write)
    project.record_run("task add", task=name, type=entry.type, root=entry.root, options=entry.options,
                       train=train)
    summary = summarise(splits, entry, Path(entry.root))
    summary.in_training_set = train
    return summary


def list_tasks(config: GrappaConfig) -> list[TaskSummary]:
    """Every configured task with its split sizes; a task that fails to load carries its error."""
    from grappa_cli.data.sources import evaluation_tasks, load_entry, mrt_members, task_root

    training = set(config.data.train)
    if "mrt" in training:
        with contextlib.suppress(GrappaError):  # an incomplete MRT is reported elsewhere
            training |= set(mrt_members(config))
    try:
        evaluated = set(evaluation_tasks(config))
    except GrappaError:
        evaluated = set(config.eval.tasks)
    summaries = []
    for entry in config.tasks.values():
        try:
            root = task_root(config, entry)
            summary = summarise(load_entry(config, entry), entry, root)
        except GrappaError as exc:
            summary = TaskSummary(entry.name, entry.type, entry.root, dict(entry.options), error=str(exc))
        summary.in_training_set = entry.name in training
        summary.evaluated = entry.name in evaluated
        summaries.append(summary)
    return summaries
