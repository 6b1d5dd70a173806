"""Filesystem helpers that never leave half-written files behind.

Every lasting file is written to a temporary sibling, flushed to disk (``fsync``), given the
mode a plain ``open()`` would give it under the user's umask (``mkstemp`` makes 0600), and
renamed over the target in one step (:func:`publish`): a reader sees the old file or the
new one, never a part, even after a crash or a full disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from grappa_cli.storage import faults

_umask_lock = threading.Lock()


def file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open(path, "w")`` creates files with."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def publish(tmp: Path, path: Path) -> None:
    """Make the finished temporary file ``tmp`` the file ``path``: fsync, chmod, rename."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, file_mode())
    faults.point(str(path))
    os.replace(tmp, path)


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a temporary sibling of ``path``, then publish it (a reader sees the old file
    or the whole new one); on any error, or Ctrl-C, the temporary file is removed."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_sibling(path: Path) -> Path:
    """A unique temporary path in the same directory (same filesystem, so rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
