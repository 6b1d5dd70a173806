"""From ``grappa.toml`` to image lists: the unlabeled training set D and the test splits.

``[tasks.NAME]`` tables say which reader (``type``, default NAME) reads which ``root``
(relative roots are relative to the folder holding ``grappa.toml``), with the reader's own
options. ``data.train`` lists what forms D, each entry being

* a configured task name: its train split (labels dropped);
* ``"mrt"``: the six MRT tasks, i.e. the configured tasks whose types are ``aircraft``,
  ``cars``, ``cub``, ``flowers``, ``food101`` and ``products`` (all six must be configured);
* a path to a folder: every image below it, whatever the layout (unlabeled data).

D keeps the order of ``data.train`` and of each split; a path listed twice (the same task
named twice, or a folder overlapping a task) is kept once, at its first position.
"""

from __future__ import annotations

from pathlib import Path

from grappa_cli.config import GrappaConfig, TaskEntry
from grappa_cli.data.tasks.base import ImageList, TaskReader, TaskSplits
from grappa_cli.data.tasks.mrt import MRT_TASKS
from grappa_cli.errors import ConfigError, DataError, GrappaError
from grappa_cli.suggest import did_you_mean

MRT = "mrt"


def base_dir(config: GrappaConfig) -> Path:
    """Where relative paths in the config start: the folder of ``grappa.toml`` (else the cwd)."""
    return config.path.parent if config.path is not None else Path.cwd()


def task_root(config: GrappaConfig, entry: TaskEntry) -> Path:
    """The absolute dataset root of a configured task."""
    if not entry.root:
        raise ConfigError(
            f"task {entry.name} has no root in grappa.toml",
            hint=f'set root = "/path/to/dataset" or run `grappa task add {entry.name} ROOT`',
        )
    root = Path(entry.root).expanduser()
    return root if root.is_absolute() else base_dir(config) / root


def task_entry(config: GrappaConfig, name: str) -> TaskEntry:
    """The ``[tasks.NAME]`` table, or an error listing the configured tasks."""
    try:
        return config.tasks[name]
    except KeyError:
        configured = ", ".join(config.tasks) or "none"
        raise ConfigError(
            f"no task {name!r} in the configuration{did_you_mean(name, config.tasks)}; "
            f"configured: {configured}",
            hint=f"add it with `grappa task add {name} ROOT`",
        ) from None


def reader_for(entry: TaskEntry) -> TaskReader:
    """The task plugin that reads this entry (``type``)."""
    from grappa_cli.plugins import get

    return get("tasks", entry.type)


def load_entry(config: GrappaConfig, entry: TaskEntry) -> TaskSplits:
    """Read one configured task; errors say which ``[tasks.NAME]`` table they come from."""
    reader = reader_for(entry)
    root = task_root(config, entry)
    try:
        splits = reader.load(root, **entry.options)
    except GrappaError as exc:
        raise type(exc)(f"task {entry.name}: {exc.message}", hint=exc.hint) from None
    if splits.name != entry.name:
        splits = TaskSplits(
            name=entry.name, train=splits.train, test=splits.test, info={"type": entry.type, **splits.info}
        )
    else:
        splits.info.setdefault("type", entry.type)
    return splits


def load_task(config: GrappaConfig, name: str) -> TaskSplits:
    """Read the configured task ``name``."""
    return load_entry(config, task_entry(config, name))


def mrt_members(config: GrappaConfig) -> list[str]:
    """Names of the configured tasks that make up MRT, in Table 1 order."""
    members: list[str] = []
    missing: list[str] = []
    for task_type in MRT_TASKS:
        matches = [e.name for e in config.tasks.values() if e.type == task_type]
        if len(matches) > 1:
            matches = [m for m in matches if m == task_type] or matches
        if not matches:
            missing.append(task_type)
        elif len(matches) > 1:
            raise ConfigError(
                f'"mrt" in data.train is ambiguous: tasks {", ".join(matches)} all have type {task_type!r}',
                hint=f'list the tasks by name in data.train instead of "mrt", or rename one to {task_type}',
            )
        else:
            members.append(matches[0])
    if missing:
        raise ConfigError(
            f'"mrt" in data.train needs the six MRT tasks configured; missing: {", ".join(missing)}',
            hint=f"add each with `grappa task add NAME ROOT` (e.g. `grappa task add {missing[0]} /data/...`)",
        )
    return members


def training_parts(config: GrappaConfig) -> list[tuple[str, ImageList]]:
    """The pieces of D as (source, labeled train split or unlabeled folder), before the union."""
    parts: list[tuple[str, ImageList]] = []
    if not config.data.train:
        raise ConfigError("data.train is empty", hint='list the tasks (or "mrt", or folders) to train on')
    for item in config.data.train:
        if item in config.tasks:
            parts.append((item, load_task(config, item).train))
        elif item == MRT:
            parts += [(name, load_task(config, name).train) for name in mrt_members(config)]
        else:
            parts.append((item, _folder_images(config, item)))
    return parts


def training_set(config: GrappaConfig) -> ImageList:
    """D: the union of the parts of ``data.train``, labels dropped, each path once."""
    seen: set[str] = set()
    paths: list[str] = []
    for _, part in training_parts(config):
        for path in part.paths:
            if path not in seen:
                seen.add(path)
                paths.append(path)
    if not paths:
        raise DataError(
            "the training set (data.train) has no image",
            hint="check the tasks' roots and their split options",
        )
    return ImageList(paths=paths, labels=None, classes=[])


def labelled_training_set(config: GrappaConfig) -> ImageList:
    """The labelled part of D, for the supervised fusion reference (appendix C).

    Every task of ``data.train`` contributes its train split with its own labels; classes of
    different tasks stay different classes (task ``a``'s class 0 and task ``b``'s class 0 are
    two classes, named ``a/<class>`` and ``b/<class>``). Unlabelled folders in ``data.train``
    contribute nothing; an image listed twice keeps its first label.
    """
    seen: set[str] = set()
    paths: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    sources_seen: set[str] = set()
    for source, part in training_parts(config):
        if part.labels is None or not part.classes or source in sources_seen:
            continue
        sources_seen.add(source)
        offset = len(classes)
        classes += [f"{source}/{name}" for name in part.classes]
        for path, label in zip(part.paths, part.labels, strict=True):
            if path not in seen:
                seen.add(path)
                paths.append(path)
                labels.append(offset + int(label))
    if not paths:
        raise DataError(
            "the supervised fusion needs labelled training images, but data.train holds only unlabelled folders",
            hint="list a task with class folders in data.train, or choose another fusion strategy",
        )
    import numpy as np

    return ImageList(paths=paths, labels=np.asarray(labels, dtype=np.int64), classes=classes)


def test_set(config: GrappaConfig, task_name: str) -> ImageList:
    """The labeled test split of a configured task."""
    splits = load_task(config, task_name)
    if splits.test is None or len(splits.test) == 0:
        raise DataError(
            f"task {task_name!r} has no test split",
            hint=f"change its split option (tasks.{task_name} in grappa.toml) or evaluate another task",
        )
    return splits.test


def evaluation_tasks(config: GrappaConfig) -> list[str]:
    """``eval.tasks``, or every configured task that has a test split (config order)."""
    if config.eval.tasks:
        for name in config.eval.tasks:
            entry = task_entry(config, name)
            if not _has_test(entry):
                raise ConfigError(
                    f"eval.tasks lists {name!r}, which has no test split",
                    hint=f"remove it from eval.tasks or change the split of tasks.{name}",
                )
        return list(config.eval.tasks)
    return [name for name, entry in config.tasks.items() if _has_test(entry)]


def _has_test(entry: TaskEntry) -> bool:
    reader = reader_for(entry)
    has_test = getattr(reader, "has_test", None)
    if has_test is None:
        return True
    try:
        return bool(has_test(**entry.options))
    except GrappaError as exc:
        raise type(exc)(f"task {entry.name}: {exc.message}", hint=exc.hint) from None


def _folder_images(config: GrappaConfig, item: str) -> ImageList:
    from grappa_cli.data.tasks.imagefolder import IMAGE_EXTENSIONS, list_images

    path = Path(item).expanduser()
    path = path if path.is_absolute() else base_dir(config) / path
    if not path.is_dir():
        configured = ", ".join(config.tasks) or "none"
        raise ConfigError(
            f"data.train entry {item!r} is not a configured task{did_you_mean(item, [*config.tasks, MRT])} "
            f'(configured: {configured}), not "mrt" and not an existing folder ({path})',
            hint="add the task with `grappa task add` or fix the entry",
        )
    paths = list_images(path)
    if not paths:
        raise DataError(
            f"data.train folder {path} holds no image ({', '.join(IMAGE_EXTENSIONS)})", hint="check the path"
        )
    return ImageList(paths=paths, labels=None, classes=[])
