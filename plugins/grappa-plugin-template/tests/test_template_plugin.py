"""The template plugin, installed: its metric, task and command through grappa itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def grappa(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grappa_cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_listed_by_grappa_plugins() -> None:
    proc = grappa("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    info = next(i for i in json.loads(proc.stdout) if i["name"].startswith("template"))
    assert info["registers"] == {"metrics": ["precision@10"], "tasks": ["csv-list"]}
    assert "register_commands" in info["hooks"]


def test_precision_at_10_by_hand() -> None:
    from grappa_cli.retrieval.metrics import retrieval_metrics

    # two well separated classes of 11 points: each query's 10 neighbours are its own class
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.01, (11, 4)) + np.array([1, 0, 0, 0])
    b = rng.normal(0, 0.01, (11, 4)) + np.array([0, 1, 0, 0])
    x = np.concatenate([a, b])
    labels = [0] * 11 + [1] * 11
    assert retrieval_metrics(x, labels, metrics=["precision@10"])["precision@10"] == pytest.approx(1.0)
    # one class of 6 and one of 16: queries of the small class find 5 relevant among 10
    x2 = np.concatenate([a[:6], b, b[:5] + 0.001])
    labels2 = [0] * 6 + [1] * 16
    value = retrieval_metrics(x2, labels2, metrics=["precision@10"])["precision@10"]
    assert value == pytest.approx((6 * 0.5 + 16 * 1.0) / 22)


def _listing(tmp_path: Path) -> Path:
    from PIL import Image

    rows = ["path,label,split"]
    for i in range(6):
        name = f"img{i}.png"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name)
        rows.append(f"{name},{'cat' if i % 2 else 'dog'},{'train' if i < 2 else 'test'}")
    path = tmp_path / "list.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_task_reads_splits(tmp_path: Path) -> None:
    from grappa_cli import plugins

    task = plugins.get("tasks", "csv-list")
    splits = task.load(_listing(tmp_path))
    assert len(splits.train) == 2 and len(splits.test) == 4
    assert splits.test.classes == ["cat", "dog"]
    assert splits.test.labels.tolist() == [1, 0, 1, 0]


def test_csv_check_command(tmp_path: Path) -> None:
    listing = _listing(tmp_path)
    proc = grappa("csv-check", str(listing))
    assert proc.returncode == 0, proc.stderr
    assert "test: 4 images, 2 classes" in proc.stdout
    (tmp_path / "img3.png").unlink()
    proc = grappa("csv-check", str(listing))
    assert proc.returncode == 1 and proc.stderr.startswith("Error: 1 listed images do not exist")
