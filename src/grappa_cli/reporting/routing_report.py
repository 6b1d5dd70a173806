"""Where Grappa-R routes each task: ``reports/routing.md`` and ``routing.csv``, next to the oracle's choice.

For each evaluated task, the mean weight Grappa-R's last layer gives each adaptor set and the
frozen backbone on (a sample of) the task's test images, the candidate it weighs most, and, for
reference only, the set the oracle picks with the test labels. The router never sees those
labels; the oracle column is there to show how close the label-free choice came.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from grappa_cli.project import Project

if TYPE_CHECKING:
    from grappa_cli.reporting.results import OracleChoice

MODEL = "fused:route"


@dataclass
class TaskRouting:
    task: str
    images: int
    weights: dict[str, float]
    oracle: str | None

    @property
    def routed_to(self) -> str:
        return max(self.weights, key=lambda name: self.weights[name])


class RoutingSources(TypedDict):
    """Grappa-R's choice per training source, as its checkpoint records it (``RoutingPlan.to_dict``)."""

    sources: list[str]
    candidates: list[str]
    images: list[int]
    #: [source][candidate]: the criterion's score and the weight (each row sums to 1)
    scores: list[list[float]]
    table: list[list[float]]


@dataclass
class RoutingReport:
    candidates: list[str]
    tasks: list[TaskRouting] = field(default_factory=list)
    sources: RoutingSources | None = None


def routing_report(project: Project, tasks: list[str], oracle: dict[str, OracleChoice], *, limit: int = 256,
                   device: str | None = None) -> RoutingReport | None:
    """The routing of the project's Grappa-R on each task's test images (None without a Grappa-R)."""
    from grappa_cli.pipeline.stages import models
    from grappa_cli.pipeline.stages.fuse import inspect_attention

    if models.record(project, models.parse(MODEL)) is None:
        return None
    found = inspect_attention(project, "route", tasks=tasks, limit=limit, device=device)
    report = RoutingReport(list(found["sets"]), sources=found.get("routing"))
    for task in tasks:
        group = found["groups"].get(task)
        if group is None:
            continue
        last = group["per_layer"][-1]  # the layer whose mix the embedding leaves with
        choice = oracle.get(task)
        report.tasks.append(TaskRouting(task, int(group["images"]), dict(zip(report.candidates, last, strict=True)),
                                        choice.model.partition(":")[2] if choice is not None else None))
    return report


def to_markdown(report: RoutingReport) -> str:
    lines = ["# Where Grappa-R routes each task", "",
             "Mean weight of each adaptor set and of the frozen backbone in the last layer, on the task's test "
             "images. The oracle's set is chosen with the test labels and shown for reference only.", "",
             "| task | images | " + " | ".join(report.candidates) + " | routed to | oracle's set |",
             "|---" * (len(report.candidates) + 4) + "|"]
    for row in report.tasks:
        cells = " | ".join(f"{row.weights[c]:.2f}" for c in report.candidates)
        lines.append(f"| {row.task} | {row.images} | {cells} | {row.routed_to} | {row.oracle or '-'} |")
    if report.sources:
        lines += ["", "Choice per training source (weight, criterion score):", "",
                  "| source | " + " | ".join(report.sources["candidates"]) + " |",
                  "|---" * (len(report.sources["candidates"]) + 1) + "|"]
        for s, source in enumerate(report.sources["sources"]):
            cells = " | ".join(f"{w:.2f} ({v:.3f})" for w, v in
                               zip(report.sources["table"][s], report.sources["scores"][s], strict=True))
            lines.append(f"| {source} | {cells} |")
    return "\n".join(lines) + "\n"


def to_csv(report: RoutingReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "images", *report.candidates, "routed_to", "oracle"])
    for row in report.tasks:
        writer.writerow([row.task, row.images, *(f"{row.weights[c]:.4f}" for c in report.candidates),
                         row.routed_to, row.oracle or ""])
    return buffer.getvalue()
