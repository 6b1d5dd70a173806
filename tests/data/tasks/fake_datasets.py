"""Tiny copies of each dataset's on-disk layout (few, small, real image files).

Every builder writes the files the real archive has, in the same format, and returns the
root a user would give (the folder holding the dataset folder). Class lists are given in
a deliberately non-alphabetical order so tests can tell the alphabetical split from the
file order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_image(path: Path, seed: int, size: int = 8) -> Path:
    """A small real image; the format follows the extension (JPEG or PNG)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _mat(path: Path, data: dict) -> None:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, data)


def make_aircraft(root: Path, variants: list[str], per_class: int = 3) -> Path:
    """``fgvc-aircraft-2013b/data/``: variants.txt, images_variant_{trainval,test}.txt, images/."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    lines = {"trainval": [], "test": []}
    image_id = 1000000
    for variant in variants:
        for i in range(per_class):
            image_id += 1
            write_image(data / "images" / f"{image_id}.jpg", image_id)
            lines["trainval" if i % 2 == 0 else "test"].append(f"{image_id} {variant}\n")
    for split, content in lines.items():
        (data / f"images_variant_{split}.txt").write_text("".join(content))
    return root


def make_cars(root: Path, class_names: list[str], per_class: int = 3) -> Path:
    """``stanford_cars/``: devkit/cars_meta.mat, devkit/cars_train_annos.mat,
    cars_test_annos_withlabels.mat, cars_train/, cars_test/ (struct arrays as in the devkit)."""
    base = root / "stanford_cars"
    names = np.empty((1, len(class_names)), dtype=object)
    names[0, :] = class_names
    _mat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    records: dict[str, list] = {"train": [], "test": []}
    counter = 0
    for class_id, _ in enumerate(class_names, 1):
        for i in range(per_class):
            counter += 1
            split = "train" if i % 2 == 0 else "test"
            fname = f"{counter:05d}.jpg"
            write_image(base / f"cars_{split}" / fname, counter)
            records[split].append((fname, class_id))
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("class", "O"), ("fname", "O")]
    for split, items in records.items():
        annos = np.zeros((1, len(items)), dtype=dtype)
        for j, (fname, class_id) in enumerate(items):
            annos[0, j] = (
                np.array([[1]]),
                np.array([[1]]),
                np.array([[class_id]], dtype=np.uint8),
                np.array([fname]),
            )
        target = (
            base / "devkit" / "cars_train_annos.mat"
            if split == "train"
            else base / "cars_test_annos_withlabels.mat"
        )
        _mat(target, {"annotations": annos})
    return root


def make_cub(root: Path, class_names: list[str], per_class: int = 3, *, folder: str = "CUB_200_2011") -> Path:
    """``CUB_200_2011/``: images.txt, image_class_labels.txt, classes.txt, images/<class>/<file>.jpg."""
    base = root / folder
    base.mkdir(parents=True)
    images, labels, classes = [], [], []
    image_id = 0
    for class_id, name in enumerate(class_names, 1):
        classes.append(f"{class_id} {name}\n")
        for i in range(per_class):
            image_id += 1
            relative = f"{name}/{name}_{i:04d}.jpg"
            write_image(base / "images" / relative, image_id)
            images.append(f"{image_id} {relative}\n")
            labels.append(f"{image_id} {class_id}\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    (base / "classes.txt").write_text("".join(classes))
    (base / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, image_id + 1)))
    return root


def make_flowers(root: Path, counts: dict[int, int]) -> Path:
    """``flowers-102/``: jpg/image_%05d.jpg, imagelabels.mat (1-based labels), setid.mat."""
    base = root / "flowers-102"
    labels: list[int] = []
    for label, count in counts.items():
        labels += [label] * count
    split_of = {"trnid": [], "valid": [], "tstid": []}
    for image_id, _ in enumerate(labels, 1):
        write_image(base / "jpg" / f"image_{image_id:05d}.jpg", image_id)
        split_of[("trnid", "valid", "tstid")[image_id % 3]].append(image_id)
    _mat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    _mat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in split_of.items()})
    return root


def make_food101(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """``food-101/``: meta/{train,test}.json ({class: ["class/id", ...]}), images/<class>/<id>.jpg."""
    base = root / "food-101"
    meta: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    counter = 0
    for name in classes:
        for i in range(per_class):
            counter += 1
            split = "train" if i % 2 == 0 else "test"
            write_image(base / "images" / name / f"{counter}.jpg", counter)
            meta[split].setdefault(name, []).append(f"{name}/{counter}")
    (base / "meta").mkdir(parents=True)
    for split, content in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(content))
    return root


def make_products(root: Path, train: dict[int, int], test: dict[int, int]) -> Path:
    """``Stanford_Online_Products/``: Ebay_{train,test}.txt (official header), <super>_final/ images."""
    base = root / "Stanford_Online_Products"
    counter = 0
    for name, classes in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        lines = ["image_id class_id super_class_id path\n"]
        for class_id, count in classes.items():
            for i in range(count):
                counter += 1
                relative = f"bicycle_final/{class_id}_{i}.JPG"
                write_image(base / relative, counter)
                lines.append(f"{counter} {class_id} 1 {relative}\n")
        base.mkdir(parents=True, exist_ok=True)
        (base / name).write_text("".join(lines))
    return root


def make_dtd(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """``dtd/dtd/``: images/<class>/<class>_<n>.jpg, labels/{train,val,test}1.txt."""
    base = root / "dtd" / "dtd"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    counter = 0
    for name in classes:
        for i in range(per_class):
            counter += 1
            write_image(base / "images" / name / f"{name}_{i:04d}.jpg", counter)
            lines[("train", "val", "test")[i % 3]].append(f"{name}/{name}_{i:04d}.jpg\n")
    (base / "labels").mkdir(parents=True)
    for split, content in lines.items():
        (base / "labels" / f"{split}1.txt").write_text("".join(content))
    return root


def make_eurosat(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """``eurosat/2750/<class>/<class>_<n>.jpg`` (torchvision's extraction of EuroSAT.zip)."""
    counter = 0
    for name in classes:
        for i in range(per_class):
            counter += 1
            write_image(root / "eurosat" / "2750" / name / f"{name}_{i + 1}.jpg", counter)
    return root


def make_pets(root: Path, breeds: list[str], per_class: int = 4) -> Path:
    """``oxford-iiit-pet/``: images/<Breed_name>_<n>.jpg, annotations/{trainval,test}.txt.

    Breed ids (the second column) follow the raw names' case-insensitive order, as in the
    real list.
    """
    base = root / "oxford-iiit-pet"
    ids = {b: i for i, b in enumerate(sorted(breeds, key=str.lower), 1)}
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    counter = 0
    for breed in breeds:
        for i in range(1, per_class + 1):
            counter += 1
            write_image(base / "images" / f"{breed}_{i}.jpg", counter)
            species = 1 if breed[0].isupper() else 2
            lines["trainval" if i % 2 else "test"].append(f"{breed}_{i} {ids[breed]} {species} 1\n")
    (base / "annotations").mkdir(parents=True)
    for split, content in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("".join(content))
    return root
