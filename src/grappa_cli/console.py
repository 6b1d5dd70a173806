"""Where output goes: results to stdout, progress/warnings/hints to stderr.

Stages never print; they receive a :class:`Reporter` and call it. The CLI passes a
:class:`RichReporter` (rich progress bars on a terminal; in a pipe, a plain line at most every
15 s with count, rate and ETA); tests and library users get
:class:`NullReporter` by default.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

#: Results (tables, JSON) go here.
out = Console(soft_wrap=True)
#: Progress, warnings and hints go here.
err = Console(stderr=True, soft_wrap=True)


def warn(message: str) -> None:
    """Print a one-line warning on stderr (the message is not parsed as rich markup)."""
    from rich.markup import escape

    err.print(f"[yellow]Warning:[/yellow] {escape(message)}", highlight=False)


def hint(message: str) -> None:
    """Print a one-line hint (what to run next) on stderr."""
    from rich.markup import escape

    err.print(f"[dim]{escape(message)}[/dim]", highlight=False)


class ProgressTask(Protocol):
    """One progress line: advance it and attach live fields (loss, images/s, ...)."""

    def advance(self, n: float = 1) -> None: ...

    def update(self, **fields: object) -> None: ...


class Reporter(Protocol):
    """What stages use to show progress; they never print directly."""

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "it") -> Iterator[ProgressTask]:
        ...

    def log(self, message: str) -> None: ...


class _NullTask:
    def __init__(self) -> None:
        self.completed = 0.0
        self.fields: dict[str, object] = {}

    def advance(self, n: float = 1) -> None:
        self.completed += n

    def update(self, **fields: object) -> None:
        self.fields.update(fields)


class NullReporter:
    """Reports nothing (library use, tests, non-zero ranks under torchrun)."""

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "it") -> Iterator[ProgressTask]:
        yield _NullTask()

    def log(self, message: str) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Progress, task_id: TaskID, unit: str) -> None:
        self._progress = progress
        self._id = task_id
        self._unit = unit
        self._start = time.perf_counter()
        self._done = 0.0
        self._fields: dict[str, object] = {}

    def advance(self, n: float = 1) -> None:
        self._done += n
        rate = self._done / max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._id, advance=n, rate=f"{rate:,.1f} {self._unit}/s")

    def update(self, **fields: object) -> None:
        self._fields.update(fields)
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in self._fields.items())
        self._progress.update(self._id, info=text)


#: Seconds between two plain progress lines when stderr is not a terminal (a pipe, a log file).
PLAIN_INTERVAL = 15.0


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _PlainTask:
    """Progress as plain lines, at most one every :data:`PLAIN_INTERVAL` seconds: count, rate, ETA.

    For output that is not a terminal, where bars cannot redraw: a long stage still shows that
    it moves (and how fast) instead of looking hung, without flooding a log.
    """

    def __init__(self, console: Console, description: str, total: float | None, unit: str,
                 clock: Callable[[], float] = time.monotonic, interval: float = PLAIN_INTERVAL) -> None:
        self._console = console
        self._description = description.strip()
        self._total = total
        self._unit = unit
        self._clock = clock
        self._interval = interval
        self._start = self._last = clock()
        self._done = 0.0
        self._fields: dict[str, object] = {}
        self.lines = 0

    def advance(self, n: float = 1) -> None:
        self._done += n
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._console.print(self.line(now), highlight=False, markup=False)
            self.lines += 1

    def update(self, **fields: object) -> None:
        self._fields.update(fields)

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self._done / elapsed
        count = f"{self._done:,.0f}"
        parts = [f"{self._description}:"]
        if self._total:
            parts.append(f"{count}/{self._total:,.0f} {self._unit} ({100 * self._done / self._total:.0f}%)")
        else:
            parts.append(f"{count} {self._unit}")
        parts.append(f"{rate:,.1f} {self._unit}/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self._total and rate > 0:
            parts.append(f"eta {_duration(max(self._total - self._done, 0) / rate)}")
        parts += [f"{k}={_fmt(v)}" for k, v in self._fields.items()]
        return "  ".join(parts)


def _plain_lines_wanted(console: Console) -> bool:
    """No bars (not a terminal) and progress not switched off with ``GRAPPA_PROGRESS=0``."""
    return os.environ.get("GRAPPA_PROGRESS") != "0" and not _progress_enabled(console)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class RichReporter:
    """rich progress bars on stderr: description, bar, count, rate, ETA and live fields."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or err

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "it") -> Iterator[ProgressTask]:
        if _plain_lines_wanted(self.console):
            yield _PlainTask(self.console, description, total, unit)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
            disable=not _progress_enabled(self.console),
        )
        with progress:
            task_id = progress.add_task(description, total=total, rate="", info="")
            yield _RichTask(progress, task_id, unit)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)


def _progress_enabled(console: Console) -> bool:
    """Bars only on a terminal (or when forced), so logs and CI output stay readable."""
    if os.environ.get("GRAPPA_PROGRESS") == "1":
        return True
    if os.environ.get("GRAPPA_PROGRESS") == "0":
        return False
    return console.is_terminal or sys.stderr.isatty()


class PipelineReporter:
    """One live view for a whole pipeline run: an overall line (stage i/n, elapsed, ETA) above
    the current stage's own progress bars, all in a single rich display on stderr.

    The ETA of the overall line counts finished steps (stages times their items), so it
    improves as the run goes; each stage's bar has its own precise ETA.
    """

    def __init__(self, total_steps: int, console: Console | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or err
        self.enabled = _progress_enabled(self.console)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, disable=not self.enabled,
        )
        self.overall = self.progress.add_task("pipeline", total=total_steps, rate="", info="")

    def __enter__(self) -> PipelineReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage(self, description: str) -> None:
        """Name the step now running on the overall line."""
        self.progress.update(self.overall, description=description)
        if not self.enabled:
            self.console.print(f"[bold]==>[/bold] {description}", highlight=False)

    def step_done(self, n: int = 1) -> None:
        self.progress.advance(self.overall, n)

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "it") -> Iterator[ProgressTask]:
        if _plain_lines_wanted(self.console):
            yield _PlainTask(self.console, description, total, unit)
            return
        task_id = self.progress.add_task(f"  {description}", total=total, rate="", info="")
        try:
            yield _RichTask(self.progress, task_id, unit)
        finally:
            self.progress.remove_task(task_id)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)
