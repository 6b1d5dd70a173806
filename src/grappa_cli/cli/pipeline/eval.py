"""``grappa eval``: leave-one-out retrieval metrics of each model on each task's test split."""

from __future__ import annotations

from typing import Annotated

import typer

from grappa_cli.cli.common import (
    DeviceOption,
    ForceOption,
    JsonOption,
    ProjectOption,
    WorkersOption,
    launch_rank,
    print_json,
    resolve_project,
    split_csv,
)


def eval_command(
    ctx: typer.Context,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Comma list of tasks, or mrt for the six MRT "
                                             "tasks (default: eval.tasks, else every task with a test split).",
                                             show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Comma list of models: backbone, "
                                              "adaptor:k<K>, fused:<strategy> (default: every model the project "
                                              "has).", show_default=False)] = None,
    device: DeviceOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch (default: eval.batch_size).",
                                                   show_default=False)] = None,
    workers: WorkersOption = None,
    force: ForceOption = False,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate models on the tasks' test splits (MAP@R, R-Precision, Recall@k); results are cached."""
    from grappa_cli.console import RichReporter, hint, out, warn
    from grappa_cli.pipeline.stages.evaluate import EvalOptions, evaluate

    proj = resolve_project(ctx, project)
    options = EvalOptions(tasks=split_csv(task) or None, models=split_csv(model) or None, device=device,
                          batch_size=batch_size, num_workers=workers, force=force)
    if launch_rank() != 0:
        evaluate(proj, options, None)
        return
    with proj.lock("eval"):
        run = evaluate(proj, options, RichReporter())
    proj.record_run("eval", models=run.models, tasks=run.tasks,
                    computed=[f"{e.model}/{e.task}" for e in run.entries if e.computed])
    for skipped in run.skipped_models:
        warn(f"skipped {skipped.reason}; {skipped.hint}")
    if as_json:
        print_json(run.to_dict())
        return
    from grappa_cli.cli.tables import print_table2
    from grappa_cli.reporting.report import build_table, task_types

    stored = [e.stored() for e in run.entries]
    table = build_table(stored, task_order=run.tasks, task_types=task_types(proj.config(), run.tasks), deltas=False)
    print_table2(out, table, "leave-one-out retrieval (percent): RP = R-Precision, mAP = MAP@R")
    computed = sum(e.computed for e in run.entries)
    hint(f"{computed} result(s) computed, {len(run.entries) - computed} already current; files under "
         f"{proj.results_dir}. Next: `grappa report`.")
