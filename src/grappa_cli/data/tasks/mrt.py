"""The Multiple Retrieval Tasks benchmark (section 4.1, Table 1) and expected split sizes.

MRT's training set D is the union of the train splits of six tasks with task and class
labels dropped (133,339 images); each task is evaluated on its own test split. In
``grappa.toml`` the name ``"mrt"`` in ``data.train`` stands for the six configured tasks
whose types are :data:`MRT_TASKS` (see :mod:`grappa_cli.data.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Task types of MRT, in the order of Table 1 (also the order of the union D).
MRT_TASKS = ("aircraft", "cars", "cub", "flowers", "food101", "products")


@dataclass(frozen=True)
class SplitCounts:
    """Classes and images of the train and test splits of one task (None = not known)."""

    train_classes: int
    train_images: int | None
    test_classes: int
    test_images: int | None


#: Table 1 of the paper for the six MRT tasks. For the zero-shot tasks of appendix B the
#: paper gives no counts; these follow from the datasets' documentation and our split:
#: DTD has 120 images in each of its 47 classes; EuroSAT's first five classes
#: (AnnualCrop, Forest, HerbaceousVegetation, Highway, Industrial) hold 14,000 of its
#: 27,000 images; Oxford-IIIT Pet image counts per breed vary, so only classes are fixed.
EXPECTED_COUNTS: dict[str, SplitCounts] = {
    "aircraft": SplitCounts(50, 5_000, 50, 5_000),
    "cars": SplitCounts(98, 8_054, 98, 8_131),
    "cub": SplitCounts(100, 5_864, 100, 5_924),
    "flowers": SplitCounts(51, 3_870, 51, 4_319),
    "food101": SplitCounts(51, 51_000, 50, 50_000),
    "products": SplitCounts(11_318, 59_551, 11_316, 60_502),
    "dtd": SplitCounts(24, 2_880, 23, 2_760),
    "eurosat": SplitCounts(5, 14_000, 5, 13_000),
    "pets": SplitCounts(19, None, 18, None),
}

#: Size of the MRT union D (section 4.1).
MRT_TRAIN_IMAGES = 133_339
