"""Tasks read with torchvision's dataset classes (``download=False``; nothing is fetched).

Each reader pools every official split of its dataset and applies the paper's class split
(:func:`grappa_cli.data.tasks.split.class_halves`). Class names are torchvision's:

* ``aircraft``: FGVC-Aircraft variants (``data/variants.txt``), 100 -> 50 / 50;
* ``cars``: Stanford Cars ``class_names`` of ``devkit/cars_meta.mat``, 196 -> 98 / 98;
* ``flowers``: Oxford Flowers-102, torchvision's English names (the dataset itself only
  numbers its classes), 102 -> 51 / 51;
* ``food101``: Food-101 folder names, 101 -> 51 / 50;
* ``dtd``, ``eurosat``, ``pets`` (appendix B, zero-shot): DTD's 47 textures (-> 24 / 23,
  all images of partition 1's train+val+test, which cover the dataset), EuroSAT's 10
  land-cover folders (-> 5 / 5) and the 37 Oxford-IIIT Pet breeds (-> 19 / 18). The paper
  does not say how it split these; we apply the same convention as for MRT so that the
  evaluated classes are never among the training half. ``split = "all-test"`` evaluates
  on every class instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar, Literal, overload

from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.data.tasks.layout import Layout, Located, locate
from grappa_cli.data.tasks.reader import BaseReader
from grappa_cli.data.tasks.split import Sample, check_files_exist, class_halves
from grappa_cli.errors import DataError


class TorchvisionTask(BaseReader):
    """A reader whose listing comes from a torchvision dataset class."""

    layout: ClassVar[Layout]

    def read(self, root: Path, **options: object) -> TaskSplits:
        where = locate(root, self.layout)
        try:
            samples = self.samples(where)
        except DataError:
            raise
        except Exception as exc:  # torchvision/scipy parse errors carry no file name
            raise DataError(
                f"cannot read the {self.layout.dataset} dataset at {where.directory} "
                f"({type(exc).__name__}: {exc})",
                hint="check that it is the original, complete dataset "
                f"({self.layout.expected(where.parent)})",
            ) from None
        check_files_exist([s.path for s in samples], dataset=self.layout.dataset, root=where.directory)
        return class_halves(
            self.name,
            samples,
            root=where.directory,
            split=self.split_of(options),
            info={"layout": "/".join(self.layout.folders)},
        )

    def samples(self, where: Located) -> list[Sample]:
        raise NotImplementedError


@overload
def _private(ds: object, attribute: Literal["_image_files", "_images"]) -> Sequence[str | Path]: ...
@overload
def _private(ds: object, attribute: Literal["_labels"]) -> Sequence[int]: ...
@overload
def _private(ds: object, attribute: Literal["_samples"]) -> Sequence[tuple[str, int]]: ...
def _private(ds: object, attribute: str) -> object:
    """A torchvision dataset's internal list (their public API exposes no file paths)."""
    try:
        return getattr(ds, attribute)
    except AttributeError:
        import torchvision

        raise DataError(
            f"torchvision {torchvision.__version__}'s {type(ds).__name__} has no {attribute!r}; "
            "grappa's reader was written for torchvision 0.17-0.29",
            hint="install a torchvision version in that range or report the incompatibility",
        ) from None


def _named(paths: Iterable[str | Path], labels: Iterable[int], classes: Sequence[str]) -> list[Sample]:
    return [Sample(str(p), str(classes[int(label)])) for p, label in zip(paths, labels, strict=True)]


class AircraftTask(TorchvisionTask):
    name = "aircraft"
    description = "FGVC-Aircraft 2013b, variant level (MRT; Table 1: 50/50 classes, 5,000/5,000 images)"
    layout = Layout(
        "FGVC-Aircraft",
        ("fgvc-aircraft-2013b",),
        (
            "data/variants.txt",
            "data/images_variant_trainval.txt",
            "data/images_variant_test.txt",
            "data/images/",
        ),
    )

    def samples(self, where: Located) -> list[Sample]:
        from torchvision.datasets import FGVCAircraft

        out: list[Sample] = []
        for split in ("trainval", "test"):
            ds = FGVCAircraft(str(where.parent), split=split, annotation_level="variant", download=False)
            out += _named(_private(ds, "_image_files"), _private(ds, "_labels"), ds.classes)
        return out


class CarsTask(TorchvisionTask):
    name = "cars"
    description = "Stanford Cars 196 (MRT; Table 1: 98/98 classes, 8,054/8,131 images)"
    layout = Layout(
        "Stanford Cars",
        ("stanford_cars",),
        (
            "devkit/cars_meta.mat",
            "devkit/cars_train_annos.mat",
            "cars_test_annos_withlabels.mat",
            "cars_train/",
            "cars_test/",
        ),
    )

    def samples(self, where: Located) -> list[Sample]:
        from torchvision.datasets import StanfordCars

        out: list[Sample] = []
        for split in ("train", "test"):
            ds = StanfordCars(str(where.parent), split=split, download=False)
            pairs = _private(ds, "_samples")
            out += _named([p for p, _ in pairs], [label for _, label in pairs], ds.classes)
        return out


def _flowers_class() -> type:
    from torchvision.datasets import Flowers102

    class PresentFlowers102(Flowers102):
        """torchvision's reader without its MD5 check of the two .mat files.

        The layout was checked file by file already; the MD5 check only rejects re-saved
        copies with a message that names no file.
        """

        def _check_integrity(self) -> bool:
            return True

    return PresentFlowers102


class FlowersTask(TorchvisionTask):
    name = "flowers"
    description = "Oxford Flowers-102 (MRT; Table 1: 51/51 classes, 3,870/4,319 images)"
    layout = Layout("Oxford Flowers-102", ("flowers-102",), ("imagelabels.mat", "setid.mat", "jpg/"))

    def samples(self, where: Located) -> list[Sample]:
        reader = _flowers_class()
        out: list[Sample] = []
        for split in ("train", "val", "test"):
            ds = reader(str(where.parent), split=split, download=False)
            out += _named(_private(ds, "_image_files"), _private(ds, "_labels"), ds.classes)
        return out


class Food101Task(TorchvisionTask):
    name = "food101"
    description = "Food-101 (MRT; Table 1: 51/50 classes, 51,000/50,000 images)"
    layout = Layout("Food-101", ("food-101",), ("meta/train.json", "meta/test.json", "images/"))

    def samples(self, where: Located) -> list[Sample]:
        from torchvision.datasets import Food101

        out: list[Sample] = []
        for split in ("train", "test"):
            ds = Food101(str(where.parent), split=split, download=False)
            out += _named(_private(ds, "_image_files"), _private(ds, "_labels"), ds.classes)
        return out


class DTDTask(TorchvisionTask):
    name = "dtd"
    description = "Describable Textures (appendix B zero-shot; 47 classes -> 24/23)"
    layout = Layout(
        "DTD",
        ("dtd", "dtd"),
        ("labels/train1.txt", "labels/val1.txt", "labels/test1.txt", "images/"),
    )

    def samples(self, where: Located) -> list[Sample]:
        from torchvision.datasets import DTD

        out: list[Sample] = []
        for split in ("train", "val", "test"):
            ds = DTD(str(where.parent), split=split, partition=1, download=False)
            out += _named(_private(ds, "_image_files"), _private(ds, "_labels"), ds.classes)
        return out


class EuroSATTask(TorchvisionTask):
    name = "eurosat"
    description = "EuroSAT RGB (appendix B zero-shot; 10 classes -> 5/5)"
    layout = Layout("EuroSAT", ("eurosat", "2750"), ("./",))

    def samples(self, where: Located) -> list[Sample]:
        from torchvision.datasets import EuroSAT

        ds = EuroSAT(str(where.parent), download=False)
        return [Sample(str(p), ds.classes[label]) for p, label in ds.samples]


class PetsTask(TorchvisionTask):
    name = "pets"
    description = "Oxford-IIIT Pet breeds (appendix B zero-shot; 37 classes -> 19/18)"
    layout = Layout(
        "Oxford-IIIT Pet",
        ("oxford-iiit-pet",),
        ("annotations/trainval.txt", "annotations/test.txt", "images/"),
    )

    def samples(self, where: Located) -> list[Sample]:
        from torchvision.datasets import OxfordIIITPet

        out: list[Sample] = []
        for split in ("trainval", "test"):
            ds = OxfordIIITPet(str(where.parent), split=split, target_types="category", download=False)
            labels = _private(ds, "_labels")
            # torchvision names the breeds present in this split, in label order.
            names = dict(zip(sorted(set(labels)), ds.classes, strict=True))
            out += [
                Sample(str(p), names[label]) for p, label in zip(_private(ds, "_images"), labels, strict=True)
            ]
        return out


READERS: tuple[type[TorchvisionTask], ...] = (
    AircraftTask,
    CarsTask,
    FlowersTask,
    Food101Task,
    DTDTask,
    EuroSATTask,
    PetsTask,
)
