"""What a task reader returns, and the protocol task plugins implement.

A task reads one dataset from a root the user gives (never downloads) and returns its
deep-metric-learning split: classes sorted alphabetically, first half for training (labels
never used for training), second half for testing (section 4.1 of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class ImageList:
    """Images of one split: absolute paths, integer labels (or None) and class names.

    ``labels[i]`` indexes ``classes``; unlabeled lists (the training union) have
    ``labels is None``.
    """

    paths: list[str]
    labels: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """Hash of the paths, their sizes and modification times (ns), and the labels.

        What an artifact was made from: an edited image changes its mtime even when its size
        stays, so the features made from it become stale. :meth:`content_fingerprint` also
        sees edits that keep both (``grappa extract --verify``).
        """
        import hashlib
        import os

        digest = hashlib.sha256()
        for path in self.paths:
            try:
                info = os.stat(path)
                size, mtime = info.st_size, info.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            digest.update(f"{path}\t{size}\t{mtime}\n".encode())
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    def content_fingerprint(self) -> str:
        """Hash of the paths and every file's bytes (slow: reads all images)."""
        import hashlib

        from grappa_cli.storage.fsutil import sha256_file

        digest = hashlib.sha256()
        for path in self.paths:
            try:
                content = sha256_file(Path(path))
            except OSError as exc:
                content = f"unreadable {exc.errno}"
            digest.update(f"{path}\t{content}\n".encode())
        return digest.hexdigest()[:16]


@dataclass
class TaskSplits:
    """The train and test splits of one task (``test`` is None for training-only sources)."""

    name: str
    train: ImageList
    test: ImageList | None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TaskReader(Protocol):
    """A task plugin: reads a dataset root into :class:`TaskSplits`.

    ``name`` is the key users write (``grappa eval --task cub``); ``load`` raises
    :class:`grappa_cli.errors.DataError` naming the expected file when the root is wrong.
    A reader may also define ``has_test(**options) -> bool`` (whether ``load`` returns a
    test split for these options) so tasks can be listed without reading data; readers
    without it are assumed to have one. Built-in readers derive from
    :class:`grappa_cli.data.tasks.reader.BaseReader`.
    """

    name: str
    description: str

    def load(self, root: Path, **options: object) -> TaskSplits: ...
