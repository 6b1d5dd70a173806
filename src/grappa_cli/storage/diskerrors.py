"""One-line messages for a full or read-only disk, instead of a raw ``OSError``.

A stage that knows how much it is about to write says so with :func:`expect`; when the
disk then fills, :func:`message` names the filesystem, the space left on it and the space
the step needed. The store's write protocol (``storage/store.py``) and the atomic file writes
(``storage/fsutil.py``) guarantee that nothing half-written is left, so the advice is always the
same: make room and rerun the same command.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)

_expected: dict[str, int] = {"bytes": 0}
_root: dict[str, Path | None] = {"path": None}


def expect(nbytes: int) -> None:
    """Record that the step now starting writes about ``nbytes`` (for the full-disk message)."""
    _expected["bytes"] = max(0, int(nbytes))


def set_root(path: Path) -> None:
    """The project the running command writes to (named when an error has no file name)."""
    _root["path"] = Path(path)


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _where(exc: OSError) -> Path:
    name = exc.filename
    if name:
        path = Path(os.fsdecode(name))
        if path.is_absolute():
            return path
        if _root["path"] is not None:
            return _root["path"] / path
    return _root["path"] or Path.cwd()


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def message(exc: OSError) -> str | None:
    """The one-line message for a full or read-only disk, or None for other errors."""
    if exc.errno in FULL:
        where = _where(exc)
        mount = _mount_point(where)
        try:
            free = shutil.disk_usage(mount).free
        except OSError:
            free = 0
        need = _expected["bytes"]
        wanted = (f"free at least {_mib(max(need - free, 0) + 16 * 2**20)} there" if need
                  else "free some space there")
        return (f"the disk holding {where} is full ({mount}: {_mib(free)} free"
                f"{f', this step writes about {_mib(need)}' if need else ''}); nothing half-written was kept; "
                f"{wanted}, then rerun the same command to resume.")
    if exc.errno in READ_ONLY:
        where = _where(exc)
        return (f"{where} is on a read-only filesystem ({_mount_point(where)}); nothing was changed; "
                "remount it writable or copy the project to a writable disk, then rerun the same command.")
    return None
