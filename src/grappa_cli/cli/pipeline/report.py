"""``grappa report``: Table 2 (Markdown, CSV) and the figures from the stored results."""

from __future__ import annotations

from typing import Annotated

import typer

from grappa_cli.cli.choices import OracleMetric, value
from grappa_cli.cli.common import Flag, JsonOption, ProjectOption, print_json, resolve_project


def report(
    ctx: typer.Context,
    paper: Annotated[bool, Flag("--paper", help="Add the numbers printed in the paper's Table 2, "
                                        "labelled as such.")] = False,
    examples: Annotated[bool, Flag("--examples", help="Also draw query/top-5 examples (Fig. 5) for the "
                                           "backbone and the best fused model.")] = False,
    examples_model: Annotated[str | None, typer.Option(help="Fused model for --examples (default: the one with "
                                                       "the best mean R-Precision, without labels).",
                                                       show_default=False)] = None,
    per_task: Annotated[int, typer.Option("--per-task", min=1, help="Queries per task for --examples.")] = 2,
    oracle_metric: Annotated[OracleMetric, typer.Option(help="Metric the oracle selects the best set on: "
                                                        "r_precision or map@r.")] = OracleMetric.r_precision,
    device: Annotated[str | None, typer.Option(help="Where --examples ranks: cpu or auto (faiss GPU).",
                                               show_default=False)] = None,
    html: Annotated[bool, typer.Option("--html/--no-html", help="Also write reports/index.html: Table 2, the "
                                       "figures, what each model retrieves, each granularity's clusters and "
                                       "the training curves.")] = True,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write reports/table2.md, table2.csv, fig4_per_task.png and index.html (and fig5_examples.png with
    --examples)."""
    from grappa_cli.cli.tables import print_table2
    from grappa_cli.console import RichReporter, out
    from grappa_cli.reporting.report import ReportOptions
    from grappa_cli.reporting.report import report as run

    proj = resolve_project(ctx, project)
    options = ReportOptions(paper=paper, examples=examples, examples_per_task=per_task,
                            examples_model=examples_model, oracle_metric=value(oracle_metric), device=device,
                            html=html)
    result = run(proj, options, RichReporter())
    if as_json:
        print_json(result.to_dict())
        return
    print_table2(out, result.table, "Table 2 (percent): RP = R-Precision, mAP = MAP@R")
    for path in result.files:
        out.print(f"wrote {path}", highlight=False)
