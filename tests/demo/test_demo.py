"""`grappa demo`: bundled data, a project, the whole pipeline and the report, end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from grappa_cli.setup.demo_data import SCALES, write_demo_datasets


def test_demo_datasets_are_deterministic(tmp_path: Path) -> None:
    a = write_demo_datasets(tmp_path / "a", SCALES["tiny"], seed=0)
    b = write_demo_datasets(tmp_path / "b", SCALES["tiny"], seed=0)
    assert a == b == {"digits": 80, "photos": 96, "shapes": 96}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == sum(a.values())
    for rel in files[:: max(1, len(files) // 20)]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    # coarse and fine classes: 4 shapes x 6 colours, 2 photos x 12 spots, 10 digits
    assert len({p.parent.name for p in (tmp_path / "a" / "shapes").rglob("*.png")}) == 24
    assert len({p.parent.name for p in (tmp_path / "a" / "photos").rglob("*.png")}) == 24
    assert len({p.parent.name for p in (tmp_path / "a" / "digits").rglob("*.png")}) == 10


def test_bundled_images_are_read_as_scikit_learn_reads_them() -> None:
    """The demo reads scikit-learn's data files without importing it; the arrays are its loaders'."""
    import numpy as np
    from sklearn.datasets import load_digits, load_sample_images

    from grappa_cli.setup.demo_data import digit_images, sample_photos

    images, targets = digit_images()
    digits = load_digits()
    assert images.dtype == digits.images.dtype and np.array_equal(images, digits.images)
    assert np.array_equal(targets, digits.target)
    photos, reference = sample_photos(), load_sample_images().images
    assert len(photos) == len(reference) == 2
    for mine, theirs in zip(photos, reference, strict=True):
        assert mine.shape == theirs.shape and np.array_equal(mine, theirs)


@pytest.mark.slow
def test_demo_end_to_end_then_nothing_to_do(tmp_path: Path, cli) -> None:
    directory = tmp_path / "demo"
    result = cli("demo", "--dir", directory, "--size", "tiny")
    assert result.exit_code == 0, result.stderr
    assert "Demo results" in result.stdout and "Grappa-avg" in result.stdout
    # on a CPU, [fuse] strategies = "auto" builds the default model alone; the run's record says why
    assert "Grappa-N" not in result.stdout and "Grappa-R" not in result.stdout
    record = json.loads((directory / ".grappa" / "runs.jsonl").read_text().splitlines()[-1])
    assert record["command"] == "demo" and record["fusion"]["strategies"] == ["avg"]
    assert "on a CPU" in record["fusion"]["reason"]
    assert f"Chosen for this machine: {record['fusion']['reason']}." in " ".join(result.stderr.split())
    for name in ("table2.md", "table2.csv", "fig4_per_task.png"):
        assert (directory / "reports" / name).is_file()
    table = (directory / "reports" / "table2.md").read_text()
    for task in ("digits", "photos", "shapes"):
        assert task in table
    results = sorted(p.relative_to(directory / "results").as_posix() for p in (directory / "results").rglob("*.json"))
    # backbone, two single sets, Grappa-avg, on three tasks
    assert len(results) == 12
    with (directory / "reports" / "table2.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows if row["default"] == "true"] == ["fused:avg"]  # the default model
    for path in (directory / "results").rglob("*.json"):
        metrics = json.loads(path.read_text())["metrics"]
        assert 0.0 <= metrics["r_precision"] <= 1.0 and 0.0 <= metrics["map@r"] <= metrics["r_precision"] + 1e-9

    page = directory / "reports" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert text.count("<img ") >= 150 and "<script" not in text and "http://" not in text
    assert (directory / "reports" / "assets").is_dir()

    again = cli("-C", directory, "run", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False

    # the demo's "Explore it" line: Grappa-N, then `grappa run` evaluates it and adds it to the report
    assert "fuse --strategy neighbor && grappa -C" in " ".join(result.stdout.split())
    assert cli("-C", directory, "fuse", "--strategy", "neighbor").exit_code == 0
    added = cli("-C", directory, "run", "--json")
    assert added.exit_code == 0, added.stderr
    evaluated = next(s["done"] for s in json.loads(added.stdout)["stages"] if s["stage"] == "eval")
    assert sorted(evaluated) == [f"fused:neighbor/{task}" for task in ("digits", "photos", "shapes")]
    assert "Grappa-N" in (directory / "reports" / "table2.md").read_text()
    events = list((directory / "checkpoints" / "runs").rglob("events.out.tfevents.*"))
    # every trained adaptor set and the attention fusion (Grappa-avg trains nothing)
    assert {p.parent.name for p in events} == {"adapt-k4", "adapt-k16", "fuse-neighbor"}
    _check_in_a_browser(page, tmp_path / "report.png")


def _check_in_a_browser(page: Path, png: Path) -> None:
    """Headless Chromium renders the page: a non-blank screenshot, every image decoded, no console error."""
    import numpy as np
    from PIL import Image

    from grappa_cli.reporting import browser

    if browser.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    check = browser.check_page(page)
    assert check.images >= 150 and check.broken == [] and check.console_errors == []
    browser.screenshot(page, png, width=1200, height=1600)
    with Image.open(png) as shot:
        pixels = np.asarray(shot.convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # text, tables, figures


def test_demo_refuses_a_foreign_directory(tmp_path: Path, cli) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = cli("demo", "--dir", tmp_path / "mine", "--size", "tiny")
    assert result.exit_code == 1
    assert "is not a grappa demo" in result.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
