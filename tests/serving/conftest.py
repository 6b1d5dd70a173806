"""A tiny fused project built once for the export and search tests, and helpers around it.

Building it (extract -> cluster -> adapt -> fuse avg) is the slowest part of these tests, so
it is made once per session with the real commands; tests that change a project work on a
copy (:func:`tests.pipeline.conftest.copy_project`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_image_folder
from tests.conftest import make_tiny_project as write_tiny_project


def run_cli(*args) -> int:
    """``grappa ARGS`` in-process, for session fixtures (the ``cli`` fixture is per test); the exit code."""
    from grappa_cli.cli.app import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


@pytest.fixture(scope="session")
def fused_project(tmp_path_factory):
    """extract -> cluster (k 2, 4) -> adapt -> fuse --strategy avg, on 4 classes x 6 images."""
    base = tmp_path_factory.mktemp("fused")
    images = make_image_folder(base / "images")
    project = write_tiny_project(base / "proj", images)
    for args in (("extract",), ("cluster", "--k", "2,4"), ("adapt",), ("fuse", "--strategy", "avg")):
        assert run_cli("-C", project.root, *args) == 0, args
    return project


@pytest.fixture(scope="session")
def gallery_images(fused_project) -> Path:
    """The project's own images (24 PNGs in 4 class folders)."""
    return Path(fused_project.config().tasks["shapes"].root)

