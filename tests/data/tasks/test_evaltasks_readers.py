"""Task readers on fake trees in each dataset's exact layout: the DML split and its errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.data.tasks.mrt import EXPECTED_COUNTS, MRT_TASKS, MRT_TRAIN_IMAGES
from grappa_cli.errors import DataError
from grappa_cli.plugins import get

from . import fake_datasets as fake


def load(task: str, root: Path, **options) -> TaskSplits:
    return get("tasks", task).load(root, **options)


# task, builder, (train classes, test classes) expected from the alphabetical split, images per class
CASES: list[tuple[str, Callable[[Path], Path], list[str], list[str], int]] = [
    (
        "aircraft",
        lambda r: fake.make_aircraft(r, ["Yak-42", "A320", "F/A-18", "737-800", "Cessna 172"]),
        ["737-800", "A320", "Cessna 172"],
        ["F/A-18", "Yak-42"],
        3,
    ),
    (
        "cars",
        lambda r: fake.make_cars(
            r,
            [
                "smart fortwo Convertible 2012",
                "AM General Hummer SUV 2000",
                "Acura RL Sedan 2012",
                "FIAT 500 Abarth 2012",
                "Ferrari FF Coupe 2012",
                "Ram C/V Cargo Van Minivan 2012",
            ],
        ),
        # code-point order: upper case first ("AM" < "Ac", "FIAT" < "Ferrari"), "smart" last
        ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "FIAT 500 Abarth 2012"],
        ["Ferrari FF Coupe 2012", "Ram C/V Cargo Van Minivan 2012", "smart fortwo Convertible 2012"],
        3,
    ),
    (
        "cub",
        lambda r: fake.make_cub(
            r,
            [
                "001.Black_footed_Albatross",
                "002.Laysan_Albatross",
                "003.Sooty_Albatross",
                "004.Groove_billed_Ani",
                "005.Crested_Auklet",
            ],
        ),
        ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"],
        ["004.Groove_billed_Ani", "005.Crested_Auklet"],
        3,
    ),
    (
        "flowers",
        # labels 1, 5, 42, 77, 102 are torchvision's "pink primrose", "english marigold",
        # "daffodil", "passion flower", "blackberry lily"
        lambda r: fake.make_flowers(r, {1: 3, 5: 3, 42: 3, 77: 3, 102: 3}),
        ["blackberry lily", "daffodil", "english marigold"],
        ["passion flower", "pink primrose"],
        3,
    ),
    (
        "food101",
        lambda r: fake.make_food101(r, ["waffles", "apple_pie", "sushi", "beignets", "ramen"]),
        ["apple_pie", "beignets", "ramen"],
        ["sushi", "waffles"],
        3,
    ),
    (
        "dtd",
        lambda r: fake.make_dtd(r, ["zigzagged", "banded", "lined", "bubbly"]),
        ["banded", "bubbly"],
        ["lined", "zigzagged"],
        3,
    ),
    (
        "eurosat",
        lambda r: fake.make_eurosat(r, ["SeaLake", "AnnualCrop", "Forest", "River", "Highway"]),
        ["AnnualCrop", "Forest", "Highway"],
        ["River", "SeaLake"],
        3,
    ),
    (
        "pets",
        lambda r: fake.make_pets(
            r, ["Abyssinian", "american_bulldog", "Bengal", "beagle", "yorkshire_terrier"]
        ),
        ["Abyssinian", "American Bulldog", "Beagle"],
        ["Bengal", "Yorkshire Terrier"],
        4,
    ),
]


def _check_split(splits: TaskSplits, train: list[str], test: list[str], per_class: int) -> None:
    assert splits.train.classes == train
    assert splits.test is not None and splits.test.classes == test
    assert not set(train) & set(test)
    for part, names in ((splits.train, train), (splits.test, test)):
        assert len(part) == per_class * len(names)
        assert np.array_equal(np.bincount(part.labels, minlength=len(names)), [per_class] * len(names))
        assert np.all(np.diff(part.labels) >= 0), "images are grouped by class, in class order"
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in part.paths)
    assert not set(splits.train.paths) & set(splits.test.paths)
    assert splits.info["train_classes"] == len(train) and splits.info["test_images"] == len(splits.test)


@pytest.mark.parametrize(("task", "build", "train", "test", "per_class"), CASES, ids=[c[0] for c in CASES])
def test_alphabetical_class_split_pools_every_official_split(tmp_path, task, build, train, test, per_class):
    root = build(tmp_path)
    splits = load(task, root)
    # odd class counts give the extra class to the training half (Table 1: Food-101 51/50)
    assert len(train) == (len(train) + len(test) + 1) // 2
    _check_split(splits, train, test, per_class)


@pytest.mark.parametrize(("task", "build", "train", "test", "per_class"), CASES, ids=[c[0] for c in CASES])
def test_root_may_be_the_dataset_folder_itself(tmp_path, task, build, train, test, per_class):
    parent = build(tmp_path)
    inner = Path(splits_dir := load(task, parent).info["root"])
    assert inner != parent and splits_dir.startswith(str(parent))
    from_inner = load(task, inner)
    from_parent = load(task, parent)
    assert from_inner.train.paths == from_parent.train.paths
    assert from_inner.test.paths == from_parent.test.paths


def test_flowers_skips_torchvisions_md5_check_of_resaved_mat_files(tmp_path):
    # the fake .mat files have other checksums than the originals; torchvision alone refuses them
    from torchvision.datasets import Flowers102

    root = fake.make_flowers(tmp_path, {1: 3, 2: 3})
    with pytest.raises(RuntimeError):
        Flowers102(str(root), split="train", download=False)
    assert len(load("flowers", root).train) == 3


def test_products_uses_the_official_split_with_numeric_class_order(tmp_path):
    root = fake.make_products(tmp_path, train={2: 3, 1: 2, 10: 2}, test={11: 2, 12: 3})
    splits = load("products", root)
    assert splits.train.classes == ["1", "2", "10"]
    assert splits.test.classes == ["11", "12"]
    assert len(splits.train) == 7 and len(splits.test) == 5
    assert [splits.train.classes[i] for i in splits.train.labels] == ["1"] * 2 + ["2"] * 3 + ["10"] * 2
    everything = load("products", root, split="all-test")
    assert len(everything.train) == 0 and len(everything.test) == 12


def test_cub_accepts_a_renamed_dataset_folder(tmp_path):
    fake.make_cub(tmp_path, ["001.A", "002.B"], folder="birds")
    splits = load("cub", tmp_path / "birds")
    assert splits.train.classes == ["001.A"] and splits.test.classes == ["002.B"]


@pytest.mark.parametrize("split", ["classes", "all-test", "all-train"])
def test_split_option(tmp_path, split):
    root = fake.make_food101(tmp_path, ["b", "a", "c"], per_class=2)
    splits = load("food101", root, split=split)
    if split == "classes":
        assert (splits.train.classes, splits.test.classes) == (["a", "b"], ["c"])
    elif split == "all-test":
        assert len(splits.train) == 0 and splits.test.classes == ["a", "b", "c"] and len(splits.test) == 6
    else:
        assert splits.test is None and splits.train.classes == ["a", "b", "c"]
    assert get("tasks", "food101").has_test(split=split) == (split != "all-train")


def test_singleton_test_classes_are_kept_and_reported(tmp_path):
    root = fake.make_food101(tmp_path, ["a", "b", "c", "d"], per_class=2)
    os.remove(root / "food-101" / "images" / "d" / "8.jpg")
    meta = root / "food-101" / "meta" / "test.json"
    meta.write_text(meta.read_text().replace(', "d": ["d/8"]', "").replace('"d": ["d/8"], ', ""))
    splits = load("food101", root)
    assert splits.test.classes == ["c", "d"] and len(splits.test) == 3
    assert splits.info["singleton_test_classes"] == ["d"]


def test_table1_counts_add_up_to_the_mrt_row():
    train_classes = sum(EXPECTED_COUNTS[t].train_classes for t in MRT_TASKS)
    test_classes = sum(EXPECTED_COUNTS[t].test_classes for t in MRT_TASKS)
    train_images = sum(EXPECTED_COUNTS[t].train_images for t in MRT_TASKS)
    test_images = sum(EXPECTED_COUNTS[t].test_images for t in MRT_TASKS)
    assert (train_classes, train_images, test_classes, test_images) == (
        11_668,
        MRT_TRAIN_IMAGES,
        11_665,
        133_876,
    )
    for name in ("aircraft", "cars", "cub", "flowers", "food101"):
        counts = EXPECTED_COUNTS[name]
        total = counts.train_classes + counts.test_classes
        assert counts.train_classes == (total + 1) // 2


@pytest.mark.parametrize("task", sorted(EXPECTED_COUNTS))
def test_real_dataset_matches_expected_counts(task):
    variable = f"GRAPPA_DATA_{task.upper()}"
    root = os.environ.get(variable)
    if not root:
        pytest.skip(
            f"real {task} dataset not present: set {variable}=/path/to/it to check its split sizes "
            "(Table 1 for MRT)"
        )
    splits = load(task, Path(root))
    counts = EXPECTED_COUNTS[task]
    assert len(splits.train.classes) == counts.train_classes
    assert len(splits.test.classes) == counts.test_classes
    if counts.train_images is not None:
        assert len(splits.train) == counts.train_images
        assert len(splits.test) == counts.test_images


# -- bad roots ---------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"Food-101 root .*nowhere does not exist"):
        load("food101", tmp_path / "nowhere")


def test_empty_root_names_the_expected_files(tmp_path):
    with pytest.raises(DataError) as info:
        load("flowers", tmp_path)
    message = str(info.value)
    assert f"{tmp_path}/flowers-102/imagelabels.mat" in message
    assert f"{tmp_path}/flowers-102/setid.mat" in message
    assert "\n" not in message


def test_incomplete_dataset_names_the_missing_file(tmp_path):
    root = fake.make_flowers(tmp_path, {1: 3, 2: 3})
    os.remove(root / "flowers-102" / "setid.mat")
    with pytest.raises(DataError, match=r"incomplete: missing .*flowers-102/setid\.mat"):
        load("flowers", root)


def test_dataset_folder_with_another_name_says_how_to_link_it(tmp_path):
    root = fake.make_flowers(tmp_path / "x", {1: 3, 2: 3})
    renamed = tmp_path / "my_flowers"
    (root / "flowers-102").rename(renamed)
    with pytest.raises(DataError, match=r"PARENT/flowers-102/ .*ln -s .*my_flowers"):
        load("flowers", renamed)


def test_listed_image_missing_on_disk(tmp_path):
    root = fake.make_cub(tmp_path, ["001.A", "002.B"])
    os.remove(root / "CUB_200_2011" / "images" / "002.B" / "002.B_0001.jpg")
    with pytest.raises(DataError, match=r"1 of the 6 images .* are missing, e\.g\. .*002\.B_0001\.jpg"):
        load("cub", root)


def test_malformed_annotation_line_names_file_and_line(tmp_path):
    root = fake.make_cub(tmp_path, ["001.A", "002.B"])
    labels = root / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text(labels.read_text() + "7\n")
    with pytest.raises(DataError, match=r"image_class_labels\.txt line 7: expected '<id> <value>'"):
        load("cub", root)


def test_unknown_class_id_in_cub(tmp_path):
    root = fake.make_cub(tmp_path, ["001.A", "002.B"])
    labels = root / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("6 2", "6 9"))
    with pytest.raises(DataError, match=r"class id 9 .* is not in .*classes\.txt"):
        load("cub", root)


def test_products_header_and_shared_classes(tmp_path):
    root = fake.make_products(tmp_path, train={1: 2}, test={2: 2})
    listing = root / "Stanford_Online_Products" / "Ebay_test.txt"
    original = listing.read_text()
    listing.write_text(original.replace("image_id class_id", "id class"))
    with pytest.raises(DataError, match=r"Ebay_test\.txt line 1: expected the header"):
        load("products", root)
    listing.write_text(original.replace(" 2 1 ", " 1 1 "))
    with pytest.raises(DataError, match=r"share 1 class ids"):
        load("products", root)


def test_torchvision_parse_errors_become_data_errors(tmp_path):
    root = fake.make_aircraft(tmp_path, ["A", "B"], per_class=2)
    listing = root / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    listing.write_text(listing.read_text() + "1000009 NotAVariant\n")
    with pytest.raises(DataError, match=r"cannot read the FGVC-Aircraft dataset at .*KeyError"):
        load("aircraft", root)


def test_unknown_option_and_bad_split_value(tmp_path):
    root = fake.make_food101(tmp_path, ["a", "b"])
    with pytest.raises(DataError, match=r"has no option 'splt' \(did you mean 'split'\?\)"):
        load("food101", root, splt="classes")
    with pytest.raises(
        DataError, match=r"split must be one of classes, all-test, all-train \(got 'halves'\)"
    ):
        load("food101", root, split="halves")


def test_a_single_class_cannot_be_split_in_halves(tmp_path):
    root = fake.make_food101(tmp_path, ["only"])
    with pytest.raises(DataError, match=r"has 1 class; the class split needs at least 2"):
        load("food101", root)
    assert len(load("food101", root, split="all-test").test) == 3
