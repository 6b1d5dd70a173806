"""A tiny fused project built once for the export and search tests, and helpers around it.

Building it (extract -> cluster -> adapt -> fuse avg) is the slowest part of these tests, so
it is made once per session with the real commands; tests that change a project work on a
copy (:func:`tests.stages.conftest.copy_project`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_VIT_KWARGS, TINY_VIT_NAME, make_image_folder


def write_tiny_project(root: Path, images: Path):
    """A project with the tiny random ViT on ``images`` (the settings of ``tests.conftest.tiny_project``)."""
    import tomlkit

    from grappa_cli.stages.init import create_project

    project = create_project(root)
    doc = tomlkit.parse(project.config_path.read_text())
    doc["backbone"]["name"] = TINY_VIT_NAME
    doc["backbone"]["pretrained"] = False
    kwargs = tomlkit.inline_table()
    kwargs.update(TINY_VIT_KWARGS)
    doc["backbone"]["kwargs"] = kwargs
    doc["data"]["train"] = ["shapes"]
    for key, value in {"batch_size": 8, "num_workers": 0, "chunk_size": 8}.items():
        doc["data"][key] = value
    doc["runtime"]["device"] = "cpu"
    for key, value in {"bottleneck": 16, "batch_size": 8, "epochs": 1}.items():
        doc["adapt"][key] = value
    doc["fuse"]["batch_size"] = 8
    doc["fuse"]["epochs"] = 1
    doc["fuse"]["projector"] = [32, 32]
    tasks = tomlkit.table(is_super_table=True)
    shapes = tomlkit.table()
    shapes["type"] = "imagefolder"
    shapes["root"] = str(images)
    tasks["shapes"] = shapes
    doc["tasks"] = tasks
    project.config_path.write_text(tomlkit.dumps(doc))
    project.config()  # validates
    return project


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

