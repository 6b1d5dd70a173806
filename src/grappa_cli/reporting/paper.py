"""The numbers the paper reports (Table 2, ECCV 2022), for side-by-side reference.

These are the published results on the six MRT tasks with ViT-S/16 DINO and N = 8
pseudo-label sets, *not* anything this installation computed: ``grappa report --paper``
shows them in a section of their own, labelled as the paper's. Values are percentages
exactly as printed (one decimal), per task as ``(R-Precision, MAP@R)``.

Nothing here imports numpy or torch: the CLI may import this module at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Column order of Table 2 (task types, as in ``grappa_cli.data.tasks.mrt.MRT_TASKS``).
TASKS: tuple[str, ...] = ("aircraft", "cars", "cub", "flowers", "food101", "products")
#: Column titles as printed.
TASK_TITLES: dict[str, str] = {
    "aircraft": "Aircraft", "cars": "Cars", "cub": "CUB", "flowers": "Flowers", "food101": "Food-101",
    "products": "Products",
}
#: k of the pseudo-label sets P_1..P_8 (section 4, "Implementation details").
K_VALUES: tuple[int, ...] = (256, 1024, 4096, 8192, 16384, 32768, 65536, 131072)


@dataclass(frozen=True)
class PaperRow:
    """One row of Table 2: its label as printed, the grappa model it corresponds to (if any),
    and ``(RP, mAP)`` in percent for each of :data:`TASKS`."""

    label: str
    model: str | None
    values: tuple[tuple[float, float], ...]

    def get(self, task_type: str) -> tuple[float, float] | None:
        return self.values[TASKS.index(task_type)] if task_type in TASKS else None


def _row(label: str, model: str | None, *numbers: float) -> PaperRow:
    assert len(numbers) == 2 * len(TASKS)
    return PaperRow(label, model, tuple((numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)))


#: Table 2, top to bottom (the oracle's "i.e. only P_x" line is :data:`ORACLE_SETS`).
TABLE2: tuple[PaperRow, ...] = (
    _row("DINO (M)", "backbone", 17.5, 9.2, 9.0, 3.5, 33.6, 22.9, 62.5, 57.0, 27.0, 16.1, 34.1, 31.5),
    _row("M + A1", "fused:single-random", 15.4, 7.8, 7.9, 2.7, 16.2, 7.8, 62.8, 56.9, 22.1, 11.6, 32.0, 29.5),
    _row("M* (random)", "fused:random", 11.8, 5.0, 6.2, 1.7, 11.0, 4.5, 62.7, 56.2, 21.9, 11.2, 28.9, 26.5),
    _row("M + P1", "adaptor:k256", 18.0, 9.5, 8.9, 3.4, 33.3, 22.7, 63.3, 57.6, 29.0, 17.9, 32.2, 29.6),
    _row("M + P2", "adaptor:k1024", 18.0, 9.5, 9.1, 3.6, 34.9, 24.1, 66.7, 61.3, 29.3, 18.1, 32.7, 30.1),
    _row("M + P3", "adaptor:k4096", 18.3, 9.7, 9.6, 3.8, 35.3, 24.5, 67.9, 62.7, 29.5, 18.4, 34.5, 31.9),
    _row("M + P4", "adaptor:k8192", 18.1, 9.5, 9.7, 3.9, 35.2, 24.3, 67.9, 62.6, 29.6, 18.4, 35.8, 33.1),
    _row("M + P5", "adaptor:k16384", 17.6, 9.1, 9.8, 3.9, 33.5, 22.6, 67.5, 62.2, 29.5, 18.4, 37.7, 34.9),
    _row("M + P6", "adaptor:k32768", 17.3, 8.7, 9.8, 3.9, 31.4, 20.3, 66.9, 61.5, 29.4, 18.3, 39.7, 36.8),
    _row("M + P7", "adaptor:k65536", 16.3, 8.0, 9.4, 3.7, 26.5, 15.8, 64.9, 59.1, 28.8, 17.8, 42.4, 39.6),
    _row("M + P8", "adaptor:k131072", 12.6, 5.4, 7.5, 2.7, 14.8, 6.6, 56.7, 49.8, 22.1, 11.9, 46.5, 43.7),
    _row("Oracle (O)", None, 18.3, 9.7, 9.8, 3.9, 35.3, 24.5, 67.9, 62.7, 29.6, 18.4, 46.5, 43.7),
    _row("Grappa-avg", "fused:avg", 17.9, 9.3, 9.8, 3.9, 34.1, 23.1, 66.5, 61.2, 30.4, 19.2, 37.1, 34.4),
    _row("Grappa-T", "fused:transform", 18.1, 9.5, 9.8, 3.9, 34.4, 23.5, 66.5, 61.2, 30.4, 19.2, 35.9, 33.2),
    _row("Grappa-N", "fused:neighbor", 18.1, 9.5, 9.9, 4.0, 35.1, 24.1, 67.2, 61.9, 30.5, 19.3, 36.3, 33.6),
)

#: The oracle's "i.e. only" line as printed (a dash joins sets the paper considers tied).
ORACLE_SETS: dict[str, str] = {
    "aircraft": "P3", "cars": "P5-P6", "cub": "P3", "flowers": "P3-P4", "food101": "P5", "products": "P8",
}

#: The "vs. DINO" line under Grappa-N, as printed (percentage points, (RP, mAP) per task).
GRAPPA_N_VS_DINO: tuple[tuple[float, float], ...] = (
    (0.6, 0.3), (0.9, 0.5), (1.5, 1.2), (4.7, 4.9), (3.5, 3.2), (2.2, 2.1),
)


def row(label: str) -> PaperRow:
    """The row printed as ``label`` (e.g. ``"Grappa-N"``)."""
    for item in TABLE2:
        if item.label == label:
            return item
    raise KeyError(label)
