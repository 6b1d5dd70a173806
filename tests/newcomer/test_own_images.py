"""A practitioner's own image folders: ``init --task NAME=ROOT``, ``task add --train``, train/ + test/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grappa_cli import config as config_mod
from grappa_cli.data.tasks.mrt import MRT_TASKS
from grappa_cli.plugins import get
from grappa_cli.setup.init import create_project, training_items
from tests.conftest import make_image_folder


def split_layout(root: Path, *, shared: bool = False) -> Path:
    """``root/train/<class>`` (3 classes x 4 images) and ``root/test/<class>`` (2 x 3)."""
    make_image_folder(root / "train", n_classes=3, per_class=4)
    make_image_folder(root / "test", n_classes=2, per_class=3, seed=1)
    if not shared:
        for index, folder in enumerate(sorted((root / "test").iterdir())):
            folder.rename(root / "test" / f"held_out_{index}")
    return root


def test_init_with_an_image_folder_trains_on_it(cli, tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "photos", n_classes=4, per_class=3)
    result = cli("init", tmp_path / "p", "--task", f"mydata={images}")
    assert result.exit_code == 0, result.stderr
    config = config_mod.load(tmp_path / "p" / "grappa.toml")
    assert config.tasks["mydata"].type == "imagefolder" and config.tasks["mydata"].root == str(images)
    assert config.data.train == ["mydata"]
    assert "train 2 classes / 6 images; test 2 classes / 6 images (in the training set)" in result.stdout
    status = json.loads(cli("-C", tmp_path / "p", "status", "--json").stdout)
    assert len(status["next"]) == 1 and status["next"][0].startswith("run `grappa extract`")


def test_mrt_six_keep_mrt_as_the_training_set() -> None:
    six = {name: {"root": f"/data/{name}"} for name in MRT_TASKS}
    assert training_items(six) is None
    assert training_items({**six, "mine": {"type": "imagefolder", "root": "/x"}}) is None
    assert training_items({"cub": {"root": "/c"}, "mine": {"type": "imagefolder", "root": "/x"}}) == ["cub", "mine"]
    assert training_items({}) is None


def test_train_and_test_folders_are_the_two_splits(cli, tmp_path: Path) -> None:
    root = split_layout(tmp_path / "mydata")
    project = create_project(tmp_path / "p")
    result = cli("-C", project.root, "task", "add", "mydata", root)
    assert result.exit_code == 0, result.stderr
    assert "train 3 classes / 12 images; test 2 classes / 6 images" in result.stdout
    assert "train/ and test/ read as the train and test splits" in result.stderr
    splits = get("tasks", "imagefolder").load(root)
    assert all(Path(p).parts[-3] == "train" for p in splits.train.paths)
    assert all(Path(p).parts[-3] == "test" for p in splits.test.paths)
    assert splits.test.classes == ["held_out_0", "held_out_1"]
    # layout = "classes": the two folders are two classes, alphabetical halves as before
    as_classes = get("tasks", "imagefolder").load(root, layout="classes")
    assert as_classes.train.classes == ["test"] and as_classes.test.classes == ["train"]
    assert "note" not in as_classes.info
    # pooled: every image of both folders in one split
    pooled = get("tasks", "imagefolder").load(root, split="all-test")
    assert pooled.train.paths == [] and len(pooled.test) == 18


def test_train_and_test_folders_may_share_classes(tmp_path: Path) -> None:
    root = split_layout(tmp_path / "mydata", shared=True)
    splits = get("tasks", "imagefolder").load(root)
    assert splits.info["shared_classes"] == ["class_000", "class_001"]
    assert len(splits.train) == 12 and len(splits.test) == 6
    with pytest.raises(Exception, match="layout must be one of auto, classes"):
        get("tasks", "imagefolder").load(root, layout="splits")


def test_a_third_folder_means_class_folders(tmp_path: Path) -> None:
    root = split_layout(tmp_path / "mydata")
    make_image_folder(root / "extra", n_classes=1, per_class=2)
    shutil.move(str(root / "extra" / "class_000"), str(root / "val"))
    shutil.rmtree(root / "extra")
    splits = get("tasks", "imagefolder").load(root)
    assert splits.train.classes == ["test", "train"] and splits.test.classes == ["val"]


def test_task_add_train_joins_the_training_set_and_eval_tasks(cli, tmp_path: Path) -> None:
    project = create_project(tmp_path / "p")
    first = make_image_folder(tmp_path / "a", n_classes=2, per_class=2)
    second = make_image_folder(tmp_path / "b", n_classes=2, per_class=2, seed=3)
    without = cli("-C", project.root, "task", "add", "plain", first)
    assert without.exit_code == 0, without.stderr
    assert project.config().data.train == ["mrt"] and project.config().tasks["plain"].type == "imagefolder"
    added = cli("-C", project.root, "task", "add", "mine", first, "--train")
    assert added.exit_code == 0, added.stderr
    assert "(in the training set)" in added.stdout
    assert project.config().data.train == ["mine"], '"mrt" without the six MRT tasks is replaced'
    text = project.config_path.read_text()
    project.config_path.write_text(text.replace("tasks = []", 'tasks = ["mine"]', 1))
    assert project.config().eval.tasks == ["mine"]
    again = cli("-C", project.root, "task", "add", "other", second, "--train")
    assert again.exit_code == 0, again.stderr
    config = project.config()
    assert config.data.train == ["mine", "other"] and config.eval.tasks == ["mine", "other"]
    assert "# " in project.config_path.read_text(), "comments are kept"
