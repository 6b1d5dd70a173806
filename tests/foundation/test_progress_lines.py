"""Progress in a pipe: plain lines at most every 15 s with count, rate and ETA."""

from __future__ import annotations

import io

from rich.console import Console

from grappa_cli import console as console_mod
from grappa_cli.console import PLAIN_INTERVAL, RichReporter, _PlainTask


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def piped() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_plain_lines_are_throttled_and_say_count_rate_and_eta() -> None:
    target, buffer = piped()
    clock = FakeClock()
    task = _PlainTask(target, "adapt k8", total=100, unit="img", clock=clock)
    for _ in range(10):  # 10 images in 5 s: too early for a line
        clock.now += 0.5
        task.advance()
    assert buffer.getvalue() == ""
    task.update(loss=1.23456)
    for _ in range(20):  # 20 more images in the next 10 s: one line at 15 s
        clock.now += 0.5
        task.advance()
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1 and task.lines == 1
    # at 15 s: 30 of 100 images, 2.0 img/s, 70 left -> 35 s
    assert lines[0] == "adapt k8:  30/100 img (30%)  2.0 img/s  elapsed 15s  eta 35s  loss=1.235"
    for _ in range(70):  # 35 s more: two more lines (at 30 s and 45 s), never closer than 15 s
        clock.now += 0.5
        task.advance()
    assert task.lines == 3 and len(buffer.getvalue().splitlines()) == 3


def test_reporter_prints_plain_lines_only_in_a_pipe_and_not_when_switched_off(monkeypatch) -> None:
    target, _ = piped()
    monkeypatch.delenv("GRAPPA_PROGRESS", raising=False)
    monkeypatch.setattr(console_mod.sys.stderr, "isatty", lambda: False, raising=False)
    with RichReporter(target).task("extract", total=4, unit="img") as task:
        assert isinstance(task, _PlainTask)
    monkeypatch.setenv("GRAPPA_PROGRESS", "0")
    with RichReporter(target).task("extract", total=4, unit="img") as task:
        assert not isinstance(task, _PlainTask)
    assert PLAIN_INTERVAL == 15.0
