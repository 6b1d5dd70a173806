"""Shared fixtures: tiny random ViTs, synthetic image folders, projects and an in-process CLI."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRAPPA_PROGRESS", "0")
# Only the built-in plugins: an installed plugin (say, one registering an extra metric) must not
# change what the tests see. Tests of plugin loading opt back in per subprocess.
os.environ["GRAPPA_LOAD_PLUGINS"] = ""
os.environ.pop("GRAPPA_DISABLE_PLUGINS", None)


def _restore_ctrl_c() -> None:
    """Give the test process Python's Ctrl-C handler when it started with SIGINT ignored.

    A shell without job control starts background jobs (``pytest &``, ``nohup``) with SIGINT
    ignored; Python then installs no KeyboardInterrupt handler, ``_thread.interrupt_main`` does
    nothing and child processes inherit the ignored signal, so the Ctrl-C tests would see no
    interruption at all. Installing the handler here also resets SIGINT to its default in the
    children, which is what a user's terminal gives grappa.
    """
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_restore_ctrl_c()

#: timm kwargs of the tiny random ViT tests use instead of ViT-S/16.
TINY_VIT_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}
TINY_VIT_NAME = "vit_small_patch16_224"


def make_image_folder(
    root: Path, n_classes: int = 4, per_class: int = 6, size: int = 40, seed: int = 0, fmt: str = "png",
) -> Path:
    """Write a ``class/image`` tree of synthetic images whose classes differ visibly.

    Each class has its own base colour and stripe frequency; images of one class vary by
    noise and offset, so features of a random ViT already separate the classes a little.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    _, xx = np.mgrid[0:size, 0:size]
    for c in range(n_classes):
        cdir = root / f"class_{c:03d}"
        cdir.mkdir(exist_ok=True)
        base = rng.integers(0, 256, size=3)
        freq = 1 + c
        for i in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            stripes = (np.sin(xx * freq * 2 * np.pi / size + phase) > 0)[..., None]
            img = base[None, None, :] * (0.6 + 0.4 * stripes) + rng.normal(0, 12, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(cdir / f"img_{i:03d}.{fmt}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``grappa ARGS`` in-process; returns exit code, stdout and stderr."""
    from grappa_cli.cli.app import main

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, cwd: Path | None = None, env: dict[str, str | None] | None = None,
                   timeout: int = 300):
    """Run ``python -m grappa_cli ARGS`` in a fresh interpreter (for lock, import and kill tests).

    A value of None in ``env`` removes that variable (``GRAPPA_LOAD_PLUGINS: None`` loads
    every installed plugin again).
    """
    import subprocess

    full_env = {**os.environ, "GRAPPA_PROGRESS": "0", **(env or {})}
    full_env = {key: value for key, value in full_env.items() if value is not None}  # None: unset it
    return subprocess.run(
        [sys.executable, "-m", "grappa_cli", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def tiny_config_overrides() -> dict:
    """``[backbone]`` settings for a tiny random ViT (no download)."""
    return {"name": TINY_VIT_NAME, "pretrained": False, "kwargs": dict(TINY_VIT_KWARGS)}


def make_tiny_project(root: Path, images: Path):
    """A project on the image folder ``images`` with a tiny random ViT and small settings."""
    import tomlkit

    from grappa_cli.setup.init import create_project

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
    doc["cluster"]["auto_min_k"] = 2  # a few dozen images: the default floor (16) would leave one set
    for key, value in {"bottleneck": 16, "batch_size": 8, "epochs": 1, "min_steps": 0}.items():
        doc["adapt"][key] = value
    for key, value in {"batch_size": 8, "epochs": 1, "min_steps": 0, "projector": [32, 32]}.items():
        doc["fuse"][key] = value
    set_imagefolder_task(doc, "shapes", images)
    project.config_path.write_text(tomlkit.dumps(doc))
    project.config()  # validates
    return project


def set_imagefolder_task(doc, name: str, root: Path) -> None:
    """Make ``[tasks.NAME]`` of a parsed grappa.toml the image folder ``root`` (the only task)."""
    import tomlkit

    tasks = tomlkit.table(is_super_table=True)
    task = tomlkit.table()
    task["type"] = "imagefolder"
    task["root"] = str(root)
    tasks[name] = task
    doc["tasks"] = tasks


def copy_project(project, dest: Path):
    """A copy of a whole project directory (for comparing an interrupted run with a clean one)."""
    import shutil

    from grappa_cli.project import Project

    shutil.copytree(project.root, dest)
    return Project(dest)


@pytest.fixture
def tiny_project(tmp_path: Path, image_folder: Path):
    """A project on a synthetic image folder with a tiny random ViT and small settings."""
    return make_tiny_project(tmp_path / "proj", image_folder)


def rewrite_adaptor_weights(project, name: str) -> None:
    """Write other weights under the same record: a retrain with the same settings on a GPU (whose kernels
    are not deterministic), or a ``--force`` retrain after an upgrade, gives the same fingerprint."""
    import torch

    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.model.checkpoint import load_adaptor_set, save_adaptor_set
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.records import artifacts

    backbone = build_backbone(backbone_spec(project.config()))
    path = artifacts.checkpoint_path(project, f"adaptors/{name}")
    record = artifacts.record(project, f"adaptors/{name}")
    adaptor_set = load_adaptor_set(path, backbone)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for adaptor in adaptor_set.layers:
            adaptor.up.weight.add_(0.5 * torch.randn(adaptor.up.weight.shape, generator=generator))
    save_adaptor_set(path, adaptor_set, backbone=backbone, provenance=record, k=adaptor_set.k)
    assert artifacts.record(project, f"adaptors/{name}") == record
