"""``grappa run``: every stage that is not complete, in order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from grappa_cli.cli.choices import Stage, value
from grappa_cli.cli.common import DeviceOption, JsonOption, ProjectOption, print_json, resolve_project

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.pipeline.planner import Plan
    from grappa_cli.project import Project


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
    from grappa_cli.console import PipelineReporter, out
    from grappa_cli.errors import UsageError
    from grappa_cli.pipeline.run import STAGES, run_pipeline

    until = value(until)
    if until is not None and until not in STAGES:
        raise UsageError(f"--until must be one of {', '.join(STAGES)} (got {until!r})")
    proj = resolve_project(ctx, project)
    stages = STAGES[: STAGES.index(until) + 1] if until else STAGES
    with proj.lock("run"), PipelineReporter(len(stages)) as view:
        announce = _Announcer(proj, device)
        outcome = run_pipeline(proj, device=device, reporter=view, until=until, full=full,
                               on_plan=announce.before, on_extracted=announce.after_extract)
    proj.record_run("run", **outcome.to_dict())
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


class _Announcer:
    """Say on stderr how long the run will take (from the rates measured in the project so far)
    and what settings left to ``auto`` chose for this machine; on a fresh project, whose first
    estimate is possible only once extraction has measured the backbone, say it then."""

    def __init__(self, project: Project, device: str | None) -> None:
        self.project = project
        self.device = device
        self.estimated = False

    def before(self, config: GrappaConfig, plan: Plan) -> None:
        from grappa_cli.console import err
        from grappa_cli.pipeline.estimate import estimate

        if plan.todo():
            if plan.fusion.reason and any(n.id.startswith("fusion/") for n in plan.todo()):
                err.print(f"Chosen for this machine: {plan.fusion.reason}.", highlight=False, markup=False)
            guess = estimate(self.project, config, plan)
            self.estimated = bool(guess.seconds)
            err.print(f"Estimated time: {guess.line()}.", highlight=False)

    def after_extract(self, config: GrappaConfig) -> None:
        from grappa_cli.console import err
        from grappa_cli.pipeline import planner
        from grappa_cli.pipeline.estimate import estimate

        if self.estimated:  # the run already said how long it takes: no second plan
            return
        plan = planner.build(self.project, config, device=self.device)
        if not plan.todo():
            return
        guess = estimate(self.project, config, plan)
        if guess.seconds:
            self.estimated = True
            err.print(f"Estimated time of the remaining stages: {guess.line()}.", highlight=False)
