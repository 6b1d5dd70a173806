"""``grappa run``: every stage that is not complete, in order."""

from __future__ import annotations

from typing import Annotated

import typer

from grappa_cli.cli.choices import Stage, value
from grappa_cli.cli.common import DeviceOption, JsonOption, ProjectOption, print_json, resolve_project


def run(
    ctx: typer.Context,
    until: Annotated[Stage | None, typer.Option(help="Stop after this stage: extract, cluster, adapt, fuse, "
                                                "eval or report.", show_default=False)] = None,
    full: Annotated[bool, typer.Option("--full", help="After data.train grew: rebuild everything on the union "
                                       "from scratch instead of the incremental update.")] = False,
    device: DeviceOption = None,
    project: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run every stage that is not complete (extract -> ... -> report); rerun to resume after a stop."""
    from grappa_cli.cli.pipeline.announce import RunAnnouncer
    from grappa_cli.console import PipelineReporter, out
    from grappa_cli.errors import UsageError
    from grappa_cli.pipeline.run import STAGES, run_pipeline

    until = value(until)
    if until is not None and until not in STAGES:
        raise UsageError(f"--until must be one of {', '.join(STAGES)} (got {until!r})")
    proj = resolve_project(ctx, project)
    stages = STAGES[: STAGES.index(until) + 1] if until else STAGES
    with proj.lock("run"), PipelineReporter(len(stages)) as view:
        announce = RunAnnouncer(proj, device, stages)
        outcome = run_pipeline(proj, device=device, reporter=view, until=until, full=full,
                               on_plan=announce.before, on_extracted=announce.after_extract)
    proj.record_run("run", **outcome.to_dict(), estimate=announce.record())
    if as_json:
        print_json(outcome.to_dict())
        return
    if not outcome.changed:
        out.print("Everything is up to date; nothing to do.")
        return
    for stage in outcome.stages:
        if stage.done:
            out.print(f"{stage.stage}: {', '.join(stage.done)}", highlight=False)
    out.print("Done. `grappa report` shows the results; `grappa status` what exists.")
