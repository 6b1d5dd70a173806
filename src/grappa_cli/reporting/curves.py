"""Training curves of a project's runs, drawn as inline SVG (no plotting library, no script).

Each run directory under ``runs/`` (``adapt-k256``, ``fuse-neighbor``, ...) keeps a
``metrics.jsonl``; its ``step`` records give the loss curve, and a fusion run's
``attention`` records give the attention entropy per epoch (1 = uniform over the sets).
A run resumed after an interruption has its steps once each: the last record of a step wins.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunCurves:
    run: str
    #: (global step, loss) of every logged step
    loss: list[tuple[int, float]] = field(default_factory=list)
    #: (epoch, mean attention entropy over layers) of a fusion run
    entropy: list[tuple[int, float]] = field(default_factory=list)


def read_runs(runs_dir: Path) -> list[RunCurves]:
    """The curves of every run with logged steps, adaptor sets first (by k), then fusions."""
    from grappa_cli.fusion.attention_stats import epoch_overview
    from grappa_cli.train.checkpoint import RunDir

    out = []
    for path in sorted(p for p in runs_dir.glob("*") if (p / "metrics.jsonl").is_file()):
        records = RunDir(path).read_metrics()
        steps: dict[int, float] = {}
        for record in records:
            if record.get("kind") == "step" and _finite(record.get("loss")):
                steps[int(record["step"])] = float(record["loss"])
        curves = RunCurves(path.name, sorted(steps.items()))
        attention = [r for r in records if r.get("kind") == "attention"]
        by_epoch: dict[int, float] = {}
        for row in epoch_overview(attention):
            by_epoch[int(row["epoch"])] = float(row["entropy"])
        curves.entropy = sorted(by_epoch.items())
        if curves.loss or curves.entropy:
            out.append(curves)
    return sorted(out, key=_run_order)


def _run_order(curves: RunCurves) -> tuple[int, int, str]:
    kind, _, name = curves.run.partition("-")
    if kind == "adapt" and name.startswith("k") and name[1:].isdigit():
        return 0, int(name[1:]), name
    return (1 if kind == "fuse" else 2), 0, curves.run


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(float(value))


def svg_line_chart(points: list[tuple[float, float]], *, title: str, x_label: str, y_label: str,
                   width: int = 320, height: int = 180, y_range: tuple[float, float] | None = None) -> str:
    """One polyline with axes and min/max labels, as an ``<svg>`` element with a ``<title>``."""
    pad_left, pad_right, pad_top, pad_bottom = 46, 10, 22, 30
    inner_w, inner_h = width - pad_left - pad_right, height - pad_top - pad_bottom
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = y_range if y_range else ((min(ys), max(ys)) if ys else (0.0, 1.0))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def px(x: float) -> float:
        return pad_left + (x - x0) / (x1 - x0) * inner_w

    def py(y: float) -> float:
        return pad_top + (1 - (y - y0) / (y1 - y0)) * inner_h

    line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
    esc = html.escape
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<title>{esc(title)}</title>',  # inline SVG in HTML needs no namespace attribute
        f'<text x="{pad_left}" y="14" class="chart-title">{esc(title)}</text>',
        f'<line x1="{pad_left}" y1="{pad_top + inner_h}" x2="{pad_left + inner_w}" y2="{pad_top + inner_h}" '
        'class="axis"/>',
        f'<line x1="{pad_left}" y1="{pad_top}" x2="{pad_left}" y2="{pad_top + inner_h}" class="axis"/>',
        f'<text x="{pad_left - 4}" y="{pad_top + 4}" text-anchor="end" class="tick">{_fmt(y1)}</text>',
        f'<text x="{pad_left - 4}" y="{pad_top + inner_h}" text-anchor="end" class="tick">{_fmt(y0)}</text>',
        f'<text x="{pad_left}" y="{height - 16}" class="tick">{_fmt(x0)}</text>',
        f'<text x="{pad_left + inner_w}" y="{height - 16}" text-anchor="end" class="tick">{_fmt(x1)}</text>',
        f'<text x="{pad_left + inner_w / 2}" y="{height - 4}" text-anchor="middle" class="tick">{esc(x_label)}</text>',
        f'<text x="12" y="{pad_top + inner_h / 2}" text-anchor="middle" class="tick" '
        f'transform="rotate(-90 12 {pad_top + inner_h / 2})">{esc(y_label)}</text>',
    ]
    if len(points) == 1:
        x, y = points[0]
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" class="series"/>')
    elif points:
        parts.append(f'<polyline points="{line}" class="series" fill="none"/>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"
