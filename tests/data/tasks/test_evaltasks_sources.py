"""The imagefolder reader, and building D / test splits / task lists from a configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from grappa_cli.config import from_dict
from grappa_cli.data import sources
from grappa_cli.data.tasks.mrt import MRT_TASKS
from grappa_cli.errors import ConfigError, DataError, PluginError
from grappa_cli.plugins import get
from tests.conftest import make_image_folder

from . import fake_datasets as fake


def config_for(tmp_path: Path, tasks: dict, train: list[str], eval_tasks: list[str] | None = None):
    data = {"data": {"train": train}, "tasks": tasks}
    if eval_tasks is not None:
        data["eval"] = {"tasks": eval_tasks}
    return from_dict(data, tmp_path / "grappa.toml")


# -- imagefolder -------------------------------------------------------------------------


def test_imagefolder_skips_non_images_hidden_entries_and_reports_empty_classes(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_classes=3, per_class=2)
    (root / "class_000" / "README.txt").write_text("not an image")
    (root / "class_000" / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    fake.write_image(root / ".cache" / "x.png", 1)
    fake.write_image(root / "class_001" / "nested" / "deep.JPEG", 2)
    (root / "empty_class").mkdir()
    (root / "loose.png").write_bytes(b"")
    splits = get("tasks", "imagefolder").load(root)
    assert splits.train.classes == ["class_000", "class_001"]
    assert splits.test.classes == ["class_002"]
    assert len(splits.train) == 5  # 2 + 2 + nested/deep.JPEG
    assert any(p.endswith("nested/deep.JPEG") for p in splits.train.paths)
    assert not any("README" in p or ".hidden" in p or ".cache" in p for p in splits.train.paths)
    assert splits.info["empty_classes"] == ["empty_class"]


def test_imagefolder_split_options(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_classes=3, per_class=2)
    reader = get("tasks", "imagefolder")
    everything = reader.load(root, split="all-test")
    assert len(everything.train) == 0 and everything.test.classes == ["class_000", "class_001", "class_002"]
    assert np.array_equal(everything.test.labels, [0, 0, 1, 1, 2, 2])
    training = reader.load(root, split="all-train")
    assert training.test is None and len(training.train) == 6


def test_imagefolder_on_a_flat_folder_says_what_it_expected(tmp_path):
    flat = tmp_path / "flat"
    fake.write_image(flat / "a.png", 1)
    with pytest.raises(
        DataError,
        match=r"no images in class folders under .*flat: expected .*<class>/<image>.*"
        r"1 images lie directly in it",
    ):
        get("tasks", "imagefolder").load(flat)


# -- sources -----------------------------------------------------------------------------


@pytest.fixture
def mrt_root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    fake.make_aircraft(data, ["B", "A", "C"], per_class=2)
    fake.make_cars(data, ["Z car", "A car"], per_class=2)
    fake.make_cub(data, ["001.A", "002.B"], per_class=2)
    fake.make_flowers(data, {1: 2, 2: 2, 3: 2})
    fake.make_food101(data, ["x", "y"], per_class=2)
    fake.make_products(data, train={1: 2, 2: 2}, test={3: 2})
    return data


def test_mrt_is_the_union_of_the_six_train_splits_without_labels(tmp_path, mrt_root):
    tasks = {name: {"root": str(mrt_root)} for name in MRT_TASKS}
    config = config_for(tmp_path, tasks, ["mrt"])
    train = sources.training_set(config)
    assert train.labels is None and train.classes == []
    parts = [sources.load_task(config, name).train.paths for name in MRT_TASKS]
    assert train.paths == [p for part in parts for p in part]  # Table 1 order, each split's order
    # aircraft 2 of 3 classes, cars 1 of 2, cub 1 of 2, flowers 2 of 3, food 1 of 2 (2 images each),
    # products: Ebay_train.txt (4 images)
    assert len(train) == 4 + 2 + 2 + 4 + 2 + 4 == len(set(train.paths))


def test_mrt_members_are_found_by_type_and_missing_ones_are_listed(tmp_path, mrt_root):
    tasks = {f"my_{name}": {"type": name, "root": str(mrt_root)} for name in MRT_TASKS}
    assert sources.mrt_members(config_for(tmp_path, tasks, ["mrt"])) == [f"my_{n}" for n in MRT_TASKS]
    partial = {"cub": {"root": str(mrt_root)}, "flowers": {"root": str(mrt_root)}}
    with pytest.raises(
        ConfigError,
        match=r"needs the six MRT tasks configured; missing: aircraft, cars, food101, "
        r"products",
    ):
        sources.training_set(config_for(tmp_path, partial, ["mrt"]))
    two = {**tasks, "birds2": {"type": "cub", "root": str(mrt_root)}}
    with pytest.raises(ConfigError, match=r"ambiguous: tasks my_cub, birds2 all have type 'cub'"):
        sources.mrt_members(config_for(tmp_path, two, ["mrt"]))


def test_training_set_keeps_each_path_once_in_first_position(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", n_classes=4, per_class=2)
    tasks = {"shapes": {"type": "imagefolder", "root": str(folder)}}
    config = config_for(tmp_path, tasks, ["shapes", "shapes", "imgs"])  # "imgs": relative folder path
    train = sources.training_set(config)
    shapes_train = sources.load_task(config, "shapes").train.paths
    assert len(shapes_train) == 4
    assert train.paths[:4] == shapes_train
    assert sorted(train.paths[4:]) == sorted(set(sources.test_set(config, "shapes").paths))
    assert len(train) == 8 == len(set(train.paths))


def test_unknown_training_entry(tmp_path):
    config = config_for(tmp_path, {"shapes": {"type": "imagefolder", "root": "x"}}, ["shape"])
    with pytest.raises(ConfigError, match=r"'shape' is not a configured task \(did you mean 'shapes'\?\)"):
        sources.training_set(config)


def test_relative_roots_start_at_the_config_folder_and_errors_name_the_task(tmp_path):
    make_image_folder(tmp_path / "imgs", n_classes=2, per_class=2)
    config = config_for(
        tmp_path,
        {"shapes": {"type": "imagefolder", "root": "imgs"}, "birds": {"type": "cub", "root": "nowhere"}},
        ["shapes"],
    )
    assert len(sources.test_set(config, "shapes")) == 2
    with pytest.raises(DataError, match=r"^task birds: CUB-200-2011 root .*nowhere does not exist"):
        sources.load_task(config, "birds")
    with pytest.raises(PluginError, match=r"unknown task 'cubb' \(did you mean 'cub'\?\)"):
        sources.load_task(config_for(tmp_path, {"b": {"type": "cubb", "root": "x"}}, ["b"]), "b")


def test_test_set_and_evaluation_tasks(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", n_classes=4, per_class=2)
    tasks = {
        "shapes": {"type": "imagefolder", "root": str(folder)},
        "unlabeled": {"type": "imagefolder", "root": str(folder), "split": "all-train"},
        "zero_shot": {"type": "imagefolder", "root": str(folder), "split": "all-test"},
    }
    config = config_for(tmp_path, tasks, ["unlabeled"])
    assert sources.evaluation_tasks(config) == ["shapes", "zero_shot"]
    test = sources.test_set(config, "shapes")
    assert test.classes == ["class_002", "class_003"] and np.array_equal(test.labels, [0, 0, 1, 1])
    assert len(sources.test_set(config, "zero_shot")) == 8
    with pytest.raises(DataError, match=r"task 'unlabeled' has no test split"):
        sources.test_set(config, "unlabeled")
    with pytest.raises(
        ConfigError, match=r"no task 'shape' in the configuration \(did you mean 'shapes'\?\)"
    ):
        sources.test_set(config, "shape")
    explicit = config_for(tmp_path, tasks, ["unlabeled"], eval_tasks=["zero_shot"])
    assert sources.evaluation_tasks(explicit) == ["zero_shot"]
    with pytest.raises(ConfigError, match=r"eval.tasks lists 'unlabeled', which has no test split"):
        sources.evaluation_tasks(config_for(tmp_path, tasks, ["unlabeled"], eval_tasks=["unlabeled"]))


def test_the_shared_tiny_project_has_a_training_set_and_an_evaluation_task(tiny_project):
    config = tiny_project.config()
    train = sources.training_set(config)
    assert len(train) == 12 and train.labels is None  # 2 of the 4 classes x 6 images
    assert sources.evaluation_tasks(config) == ["shapes"]
    test = sources.test_set(config, "shapes")
    assert test.classes == ["class_002", "class_003"] and len(test) == 12
    assert not set(train.paths) & set(test.paths)


# -- the labelled training set (supervised fusion reference) ---------------------------------


def test_labelled_training_set_keeps_each_tasks_classes_apart(tmp_path):
    a = make_image_folder(tmp_path / "a", n_classes=4, per_class=2)
    b = make_image_folder(tmp_path / "b", n_classes=2, per_class=3, seed=1)
    extra = make_image_folder(tmp_path / "unlabelled", n_classes=1, per_class=2, seed=2)
    config = config_for(tmp_path, {"a": {"type": "imagefolder", "root": str(a)},
                                   "b": {"type": "imagefolder", "root": str(b)}},
                        train=["a", "b", str(extra), "a"])
    labelled = sources.labelled_training_set(config)
    # train halves: a -> class_000, class_001 (2 images each); b -> class_000 (3 images)
    assert labelled.classes == ["a/class_000", "a/class_001", "b/class_000"]
    assert labelled.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert [Path(p).parent.parent.name for p in labelled.paths] == ["a"] * 4 + ["b"] * 3
    assert len(set(labelled.paths)) == len(labelled.paths)


def test_labelled_training_set_needs_a_labelled_task(tmp_path):
    folder = make_image_folder(tmp_path / "unlabelled", n_classes=2, per_class=2)
    config = config_for(tmp_path, {}, train=[str(folder)])
    with pytest.raises(DataError, match="supervised fusion needs labelled training images"):
        sources.labelled_training_set(config)
