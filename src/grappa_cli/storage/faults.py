"""Deliberate failures at the N-th durable write, so tests can prove crash consistency.

Every writer of lasting state (zarr keys of the store, atomic file replacements,
checkpoints, models) calls :func:`point` just before its write. Normally that only
counts. Armed (``GRAPPA_FAULT=N[:kind]`` in the environment, or :func:`arm` in-process),
the N-th call fails the way the outside world can:

* ``enospc`` (default): ``OSError(ENOSPC)``, as when the disk fills;
* ``erofs``: ``OSError(EROFS)``, a read-only filesystem;
* ``interrupt``: ``KeyboardInterrupt`` in the main thread, as after Ctrl-C (a write in a
  zarr I/O thread asks the main thread to stop and is not made);
* ``pause``: touch the file named by ``GRAPPA_FAULT_READY`` and wait up to 3 s before the
  write, so a test can deliver a real signal at a known point.

The write never happens, so a test can sweep N over every write of a pipeline and check
that a rerun still ends with the results of an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ENV = "GRAPPA_FAULT"
KINDS = ("enospc", "erofs", "interrupt", "pause")


@dataclass
class _Plan:
    at: int | None = None
    kind: str = "enospc"
    count: int = 0
    fired: str = ""
    record: list[str] | None = None


_lock = threading.Lock()
_plan = _Plan()
_env_read = False


def _from_env() -> None:
    global _env_read
    _env_read = True
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return
    at, _, kind = raw.partition(":")
    _plan.at = int(at)
    _plan.kind = kind or "enospc"
    if _plan.kind not in KINDS:
        raise ValueError(f"{ENV}={raw!r}: the kind must be one of {', '.join(KINDS)}")


@contextmanager
def arm(at: int | None, kind: str = "enospc", *, record: list[str] | None = None) -> Iterator[_Plan]:
    """Count writes from one inside the block; fail the ``at``-th (None: only count).

    ``record``, when given, receives what each write was about, in order.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}")
    global _env_read, _plan
    plan = _Plan(at, kind, record=record)
    with _lock:
        saved, _plan = _plan, plan
        _env_read = True
    try:
        yield plan
    finally:
        with _lock:
            _plan = saved


def point(what: str) -> None:
    """Count one durable write of ``what``; raise instead when it is the armed one."""
    if not _env_read:
        _from_env()
    with _lock:
        _plan.count += 1
        if _plan.record is not None:
            _plan.record.append(what)
        if _plan.at is None or _plan.count != _plan.at:
            return
        _plan.fired = what
        kind = _plan.kind
    if kind == "pause":
        import time
        from pathlib import Path

        ready = os.environ.get("GRAPPA_FAULT_READY")
        if ready:
            Path(ready).touch()
        time.sleep(3)
        return
    if kind == "interrupt":
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        import _thread

        _thread.interrupt_main()
        raise OSError(errno.EINTR, f"interrupted before writing {what}")
    code = errno.ENOSPC if kind == "enospc" else errno.EROFS
    raise OSError(code, os.strerror(code), what)
