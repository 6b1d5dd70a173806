"""What ``grappa run`` and ``grappa demo`` say before and during a run: the time estimate and the
settings ``auto`` chose for this machine; what they announced goes into the run's record."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection

    from grappa_cli.config import GrappaConfig
    from grappa_cli.pipeline.planner import Plan
    from grappa_cli.pipeline.rates import Estimate
    from grappa_cli.project import Project


class RunAnnouncer:
    """Say on stderr how long the run will take (from the rates measured in the project so far)
    and what settings left to ``auto`` chose for this machine; on a fresh project, whose first
    estimate is possible only once extraction has measured the backbone, say it then.

    :meth:`record` is what was announced, per stage, for the run's record: set beside each
    stage's measured seconds, it says how close the estimate was on the user's own machine.
    """

    def __init__(self, project: Project, device: str | None, stages: Collection[str] | None = None) -> None:
        self.project = project
        self.device = device
        self.stages = None if stages is None else [str(s) for s in stages]  # None: every stage
        self.estimated = False
        self.announced: dict[str, object] = {}

    def before(self, config: GrappaConfig, plan: Plan) -> None:
        from grappa_cli.console import err
        from grappa_cli.pipeline.choices import cpu_precision_note
        from grappa_cli.pipeline.estimate import estimate

        if plan.todo():
            note = cpu_precision_note(config, self.device)
            if note:
                err.print(note, highlight=False, markup=False)
            if plan.fusion.reason and any(n.id.startswith("fusion/") for n in plan.todo()):
                err.print(f"Chosen for this machine: {plan.fusion.reason}.", highlight=False, markup=False)
            guess = estimate(self.project, config, plan, self.stages)
            self.estimated = bool(guess.seconds)
            if self.estimated:
                self.announced = _announced("before the run", guess)
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
        guess = estimate(self.project, config, plan, self.stages)
        if guess.seconds:
            self.estimated = True
            self.announced = _announced("after extract", guess)
            err.print(f"Estimated time of the remaining stages: {guess.line()}.", highlight=False)

    def record(self) -> dict[str, object]:
        """``{"when", "seconds", "priced", "rough"}`` of the estimate announced (``priced``: from the
        rates alone, before calibration; ``rough``: stages priced with a borrowed rate), or ``{}``."""
        return dict(self.announced)


def _announced(when: str, guess: Estimate) -> dict[str, object]:
    return {"when": when, "seconds": _rounded(guess.seconds), "priced": _rounded(guess.priced),
            "rough": [str(stage) for stage in guess.rough]}


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {str(stage): round(float(s), 1) for stage, s in seconds.items()}
