"""Table 2 on a terminal: whole at 80 columns (short labels), full labels when the terminal is wide."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from grappa_cli.cli.tables import COMPACT_NOTE, print_table2
from grappa_cli.reporting.report import build_table
from grappa_cli.reporting.results import StoredResult

TASKS = ("digits", "photos", "shapes")
MODELS = ("backbone", "adaptor:k8", "adaptor:k32", "adaptor:k128", "fused:avg", "fused:neighbor",
          "fused:supervised")


def demo_like_table():
    results = []
    for m_index, model in enumerate(MODELS):
        for t_index, task in enumerate(TASKS):
            rp = 0.40 + 0.01 * m_index - 0.07 * t_index
            results.append(StoredResult(model, task, {"r_precision": rp, "map@r": rp - 0.1}, 100, 0, 100,
                                        model == "fused:supervised", f"eval/{model}/{task}", Path("x.json")))
    return build_table(results, task_order=TASKS)


def render(width: int, terminal: bool) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=terminal, color_system=None, soft_wrap=True)
    print_table2(console, demo_like_table(), "Demo results (percent): RP = R-Precision, mAP = MAP@R")
    return buffer.getvalue()


def test_three_tasks_fit_80_columns_with_nothing_cut() -> None:
    for terminal in (True, False):
        text = render(80, terminal)
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 80, max(lines, key=len)
        assert "…" not in text  # no header or value truncated
        for task in TASKS:
            assert task in text
        # every value is there: e.g. Grappa-N on shapes = 0.40 + 0.05 - 0.14 = 31.0 RP, vs. M = +5.0
        assert "31.0" in text and "(↑5.0)" in text
        assert "Oracle (O)" in text and "Fused (M*)" in text and "fused:supervised [L]" in text
        assert " ".join(text.split()).count(" ".join(COMPACT_NOTE.split())) == 1


def test_wide_terminal_gets_the_full_labels() -> None:
    text = render(200, True)
    assert "Results using only a single set of pseudo-granularity adaptors" in text
    assert "Oracle (O) [selected on test labels]" in text and "Short labels" not in text
