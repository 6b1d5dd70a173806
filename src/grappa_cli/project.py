"""A grappa project on disk: finding it, its paths, its write lock and its run records.

Layout::

    myproj/
      grappa.toml     configuration (see grappa_cli.config)
      store.zarr/     features, pseudo-labels, k-NN graphs, evaluation embeddings
      checkpoints/    adaptors/k<K>.safetensors, fusion/<strategy>.safetensors, runs/
      results/        <model>/<task>.json
      reports/        Table 2 (Markdown, CSV) and figures
      indexes/        faiss indexes of galleries (grappa index / grappa search)
      .grappa/        lock, runs.jsonl
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grappa_cli import config as config_mod
from grappa_cli.errors import GrappaError, ProjectLocked, ProjectNotFound

if TYPE_CHECKING:
    from grappa_cli.storage.store import Store, StoreMode

ENV_PROJECT = "GRAPPA_PROJECT"
#: project root -> (configuration, digest of grappa.toml) pinned by a running ``pinned_config``
_PINNED: dict[Path, tuple[config_mod.GrappaConfig, str]] = {}
SUBDIRS = ("store.zarr", "checkpoints", "results", "reports", "indexes", ".grappa")


@dataclass(frozen=True)
class Project:
    """Paths of one project; cheap to construct, touches nothing on disk."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / config_mod.CONFIG_NAME

    @property
    def store_path(self) -> Path:
        return self.root / "store.zarr"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adaptors_dir(self) -> Path:
        return self.checkpoints / "adaptors"

    @property
    def fusion_dir(self) -> Path:
        return self.checkpoints / "fusion"

    @property
    def runs_dir(self) -> Path:
        """Per-run training state (resumable checkpoints, metrics logs)."""
        return self.checkpoints / "runs"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def indexes_dir(self) -> Path:
        """faiss indexes of image galleries (``grappa index``)."""
        return self.root / "indexes"

    @property
    def state_dir(self) -> Path:
        return self.root / ".grappa"

    def config(self) -> config_mod.GrappaConfig:
        """The project's configuration: the one pinned by a running :meth:`pinned_config`, else read now."""
        pinned = _PINNED.get(self.root.resolve())
        return pinned[0] if pinned is not None else config_mod.load(self.config_path)

    def config_digest(self) -> str:
        """SHA-256 of ``grappa.toml``'s bytes (what an edit changes)."""
        import hashlib

        return hashlib.sha256(self.config_path.read_bytes()).hexdigest()

    @contextmanager
    def pinned_config(self) -> Iterator[config_mod.GrappaConfig]:
        """Read ``grappa.toml`` once for a run of several stages, which all see that configuration.

        Every ``config()`` of this project in this process returns the pinned one until the block
        ends; :meth:`require_config_unchanged` tells whether the file was edited meanwhile.
        """
        key = self.root.resolve()
        digest = self.config_digest()
        config = config_mod.load(self.config_path)
        _PINNED[key] = (config, digest)
        try:
            yield config
        finally:
            _PINNED.pop(key, None)

    def require_config_unchanged(self, before: str) -> None:
        """Refuse to go on when ``grappa.toml`` was edited since the pinned configuration was read."""
        pinned = _PINNED.get(self.root.resolve())
        digest = pinned[1] if pinned is not None else None
        if digest is not None and self.config_digest() != digest:
            from grappa_cli.errors import ConfigError

            raise ConfigError(
                f"{self.config_path} was edited while `grappa {before}` was working; the stages done so far "
                "used the settings it had when the run started, and the run stops here",
                hint="run `grappa run` again: it applies the new settings to what they change")

    def store(self, *, mode: StoreMode = "a") -> Store:
        from grappa_cli.storage.store import Store

        return Store(self.store_path, mode=mode)

    @contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the project's write lock (see :func:`write_lock`)."""
        with write_lock(self.state_dir / "lock", command):
            yield

    def lock_holder(self) -> dict[str, object] | None:
        """Who holds the write lock now (pid, command, start time), or None when nobody does.

        Asks the kernel with a non-blocking *shared* lock that is released at once, so a reader
        (``grappa status``) never takes the lock from a writer; a writer starting in that instant
        is told the project is busy, as it would be by any other reader of the lock.
        """
        import fcntl

        path = self.state_dir / "lock"
        if not path.is_file():
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                return _holder_record(fd) or {"pid": None}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def record_run(self, command: str, **fields: object) -> None:
        """Append one line to ``.grappa/runs.jsonl`` (what ran, when, with what outcome)."""
        from grappa_cli.storage import faults

        record = {"time": _now(), "command": command, **fields}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        faults.point(str(self.state_dir / "runs.jsonl"))
        with open(self.state_dir / "runs.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def is_project(path: Path) -> bool:
    return (path / config_mod.CONFIG_NAME).is_file()


def discover(explicit: Path | str | None = None, *, cwd: Path | None = None) -> Project:
    """Find the project: ``--project/-C``, then ``$GRAPPA_PROJECT``, then the nearest parent."""
    if explicit is not None:
        return _named(Path(explicit), "--project")
    env = os.environ.get(ENV_PROJECT)
    if env:
        return _named(Path(env), f"${ENV_PROJECT}")
    start = (cwd or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if is_project(candidate):
            return Project(candidate)
    raise ProjectNotFound(
        f"not inside a grappa project (no {config_mod.CONFIG_NAME} in {start} or any parent; "
        f"--project and ${ENV_PROJECT} not set)",
        hint="run `grappa init DIR` or pass --project DIR",
    )


def _named(path: Path, how: str) -> Project:
    path = path.expanduser().resolve()
    if not path.exists():
        raise ProjectNotFound(f"{how} names {path}, which does not exist", hint="run `grappa init` there first")
    if not is_project(path):
        raise ProjectNotFound(
            f"{how} names {path}, which has no {config_mod.CONFIG_NAME}", hint="run `grappa init` there first"
        )
    return Project(path)


@contextmanager
def write_lock(lock_path: Path, command: str) -> Iterator[None]:
    """One writer per project: an OS advisory lock (``flock``) on ``lock_path``.

    The kernel releases the lock when the process dies, so a killed run never leaves a
    stale lock. The file's content (pid, command, start time) only serves the message a
    second writer sees.
    """
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise GrappaError(f"cannot create the lock file {lock_path}: {exc.strerror}",
                          hint="check that the project directory is writable") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _read_holder(fd)
            raise ProjectLocked(
                f"the project is locked by {holder}",
                hint="wait for it to finish, or stop that process",
            ) from None
        info = {"pid": os.getpid(), "command": command, "started": _now(), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder_record(fd: int) -> dict[str, object]:
    """What the lock's holder wrote in the lock file (pid, command, start time), or {}."""
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _read_holder(fd: int) -> str:
    data = _holder_record(fd)
    if not data:
        return "another grappa process"
    return f"pid {data.get('pid')} (`grappa {data.get('command')}`, started {data.get('started')})"
