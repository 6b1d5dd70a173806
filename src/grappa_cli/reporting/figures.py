"""The paper's figures from stored results: Fig. 4 (per task) and Fig. 5 (query examples).

matplotlib is used through its object API with the Agg canvas (no pyplot state, no
display); PNGs are written atomically. Fig. 5 ranks with :func:`grappa_cli.retrieval.metrics.neighbors`,
the same ranking rule as the metrics, on the embeddings each result was computed from.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from grappa_cli.errors import StoreError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from grappa_cli.project import Project
    from grappa_cli.storage.store import Store
from grappa_cli.reporting.results import (
    TABLE_METRICS,
    OracleChoice,
    StoredResult,
    adaptor_k,
    display_name,
    order_models,
    order_tasks,
)

#: Colour of the single-set points (the paper's lavender).
SET_COLOUR = "#8e7cc3"
FUSED_COLOURS = {"fused:avg": "#1f77b4", "fused:transform": "#ff7f0e", "fused:neighbor": "#d62728",
                 "fused:route": "#2ca02c",
                 "fused:single-random": "#7f7f7f", "fused:random": "#bcbd22"}
TOP = 5


class ExamplesShown(TypedDict):
    """What Fig. 5 shows: per task, each query with the backbone's and the fused model's top images."""

    model: str
    tasks: dict[str, list[dict[str, str | list[str]]]]


def _save(fig: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from grappa_cli.storage.fsutil import atomic_write_bytes

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def per_task_figure(results: Sequence[StoredResult], choices: dict[str, OracleChoice], path: Path, *,
                    task_order: Sequence[str] = ()) -> None:
    """Fig. 4: one panel per task (rows: RP, mAP); x = k of each single set M + P_i (log scale),
    horizontal lines for the backbone and every fused model; the oracle's set is circled."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    tasks = order_tasks({r.task for r in results}, task_order)
    by_key = {(r.model, r.task): r for r in results}
    labels = {r.model: r.uses_labels for r in results}
    models = order_models(labels, labels)
    width = max(6.4, 3.2 * len(tasks))
    fig = Figure(figsize=(width, 5.8), layout="constrained")
    axes = fig.subplots(len(TABLE_METRICS), len(tasks), squeeze=False)
    handles: dict[str, Line2D] = {}
    for col, task in enumerate(tasks):
        for row, (metric, title) in enumerate(TABLE_METRICS):
            ax = axes[row][col]
            points = sorted((adaptor_k(m), 100 * by_key[(m, task)].metrics[metric]) for m in models
                            if adaptor_k(m) is not None and (m, task) in by_key and metric in by_key[(m, task)].metrics)
            if points:
                ks, ys = zip(*points, strict=True)
                ax.plot(ks, ys, "o-", color=SET_COLOUR, markersize=5, linewidth=1)
                handles.setdefault("M + P_i (single set)", Line2D([], [], color=SET_COLOUR, marker="o"))
                ax.set_xscale("log", base=2)
                ax.set_xticks(ks, [str(k) for k in ks], rotation=45, fontsize=7)
                ax.minorticks_off()
                choice = choices.get(task)
                if choice is not None and metric in choice.metrics:
                    ax.plot([adaptor_k(choice.model)], [100 * choice.metrics[metric]], "o", markersize=11,
                            markerfacecolor="none", markeredgecolor="black")
                    handles.setdefault("oracle's set", Line2D([], [], color="black", marker="o", linestyle="",
                                                              markerfacecolor="none"))
            else:
                ax.set_xticks([])
            for model in models:
                if adaptor_k(model) is not None or (model, task) not in by_key:
                    continue
                value = by_key[(model, task)].metrics.get(metric)
                if value is None:
                    continue
                colour = "black" if model == "backbone" else FUSED_COLOURS.get(model)
                style = "--" if model == "backbone" else ":" if labels.get(model) else "-"
                line = ax.axhline(100 * value, color=colour, linestyle=style, linewidth=1.4)
                handles.setdefault(display_name(model, uses_labels=labels.get(model, False)), line)
            ax.set_title(f"{task}: {title}", fontsize=9)
            ax.tick_params(labelsize=7)
            if row == len(TABLE_METRICS) - 1:
                ax.set_xlabel("pseudo-granularity k", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{title} (%)", fontsize=8)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=max(1, min(len(handles), int(width // 2.2))),
               fontsize=8, frameon=False)
    fig.suptitle("Results per task (as Fig. 4 of the paper)", fontsize=10)
    _save(fig, path)


# -- Fig. 5 --------------------------------------------------------------------------------------


def _best_fused(results: Sequence[StoredResult], tasks: set[str]) -> str:
    scores: dict[str, list[float]] = {}
    for r in results:
        if r.model.startswith("fused:") and not r.uses_labels and r.task in tasks and "r_precision" in r.metrics:
            scores.setdefault(r.model, []).append(r.metrics["r_precision"])
    if not scores:
        raise StoreError("Fig. 5 needs results of a fused model (without labels) and of the backbone on the same "
                         "tasks", hint="run `grappa fuse` and `grappa eval`, or name one with --examples-model")
    return max(sorted(scores), key=lambda m: float(np.mean(scores[m])))


def _ranked(store: Store, key: str, top: int, device: str | None) -> tuple[dict[int, np.ndarray], np.ndarray,
                                                                          np.ndarray]:
    """{row: top rows} for every evaluated query, the labels and the image paths of group ``key``."""
    from grappa_cli.pipeline.stages.embed import read_embeddings
    from grappa_cli.retrieval.metrics import neighbors

    store.require_complete(key, f"the embeddings {key}", "grappa eval --force")
    embeddings, rows = read_embeddings(store, key)
    labels = store.read(f"{key}/labels")
    paths = store.read(f"{key}/paths")
    ranked: dict[int, np.ndarray] = {}
    for chunk in neighbors(embeddings, labels[rows], depth=top, device=device):
        for query, found in zip(chunk.query_indices, chunk.indices, strict=True):
            ranked[int(rows[query])] = rows[found]
    return ranked, labels, paths


def _correct(found: np.ndarray, query: int, labels: np.ndarray) -> int:
    return int((labels[found] == labels[query]).sum())


def _thumbnail(path: str, size: int = 112) -> np.ndarray:
    from PIL import Image, ImageOps

    from grappa_cli.data.images import load_rgb

    try:
        return np.asarray(ImageOps.fit(load_rgb(path), (size, size), Image.Resampling.BICUBIC))
    except Exception:  # an unreadable image is shown grey, not fatal
        return np.full((size, size, 3), 128, dtype=np.uint8)


def examples_figure(project: Project, results: Sequence[StoredResult], path: Path, *, model: str | None = None,
                    per_task: int = 2, task_order: Sequence[str] = (), device: str | None = None) -> ExamplesShown:
    """Fig. 5: queries and their top-5 under the backbone and a fused model (green = same class).

    Per task, the ``per_task`` queries where the fused model has the most more correct images
    in its top 5 than the backbone (ties: lower index) are shown, as in the paper's figure,
    which illustrates gains; the title says so. Returns what was shown.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from grappa_cli.pipeline.stages import models as models_mod

    by_key = {(r.model, r.task): r for r in results}
    backbone_tasks = {t for m, t in by_key if m == "backbone"}
    fused = models_mod.parse(model).name if model else _best_fused(results, backbone_tasks)
    tasks = [t for t in order_tasks(backbone_tasks, task_order) if (fused, t) in by_key]
    if not tasks:
        raise StoreError(f"no task has results of both the backbone and {fused}",
                         hint=f"run `grappa eval --model backbone,{fused}`")
    store = project.store(mode="r")
    cpu = "cpu" if device in (None, "cpu") else None
    shown: ExamplesShown = {"model": fused, "tasks": {}}
    panels: list[tuple[str, str, int, np.ndarray, np.ndarray, np.ndarray]] = []
    for task in tasks:
        base, labels, paths = _ranked(store, by_key[("backbone", task)].embeddings, TOP, cpu)
        other, _, other_paths = _ranked(store, by_key[(fused, task)].embeddings, TOP, cpu)
        if list(paths) != list(other_paths):
            raise StoreError(f"the backbone's and {fused}'s embeddings of {task} list different images",
                             hint=f"rerun `grappa eval --task {task} --force`")
        common = sorted(set(base) & set(other))
        gain = {q: _correct(other[q], q, labels) - _correct(base[q], q, labels) for q in common}
        gains = sorted(common, key=lambda q: (-gain[q], q))[:per_task]
        shown["tasks"][task] = []
        for q in gains:
            shown["tasks"][task].append({"query": str(paths[q]), "backbone": [str(paths[i]) for i in base[q]],
                                         fused: [str(paths[i]) for i in other[q]]})
            panels.append((task, "backbone", q, base[q], labels, paths))
            panels.append((task, fused, q, other[q], labels, paths))
    fig = Figure(figsize=(1.45 * (TOP + 1), 1.5 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), TOP + 1, squeeze=False)
    for row, (task, name, query, found, labels, paths) in enumerate(panels):
        images = [query, *found]
        for col, index in enumerate(images):
            ax = axes[row][col]
            ax.imshow(_thumbnail(str(paths[index])))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col > 0:
                colour = "#2ca02c" if labels[index] == labels[query] else "#d62728"
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=colour,
                                       linewidth=5, clip_on=False))
        axes[row][0].set_ylabel(f"{task}\n{display_name(name)}", fontsize=8)
    axes[0][0].set_title("query", fontsize=8)
    for col in range(1, TOP + 1):
        axes[0][col].set_title(f"#{col}", fontsize=8)
    fig.suptitle(f"Top-{TOP} by M and {display_name(fused)}: per task, the queries where {display_name(fused)} "
                 "gains most (green: same class)", fontsize=9)
    _save(fig, path)
    return shown
