"""Learning-rate schedules: values at known steps, and exact continuation after a checkpoint."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from grappa_cli.errors import TrainingError
from grappa_cli.train.optim.schedule import LrMultiplier, build_scheduler


def test_constant_is_one_everywhere():
    f = LrMultiplier("constant", total_steps=10)
    assert [f(s) for s in (0, 5, 9, 50)] == [1.0, 1.0, 1.0, 1.0]


def test_cosine_goes_from_one_to_the_final_fraction():
    f = LrMultiplier("cosine", total_steps=100, final_fraction=0.0)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.5)
    assert f(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert f(500) == pytest.approx(0.0, abs=1e-12)


def test_warmup_then_cosine_as_barlow_twins():
    """Barlow Twins: lr = base * step / warmup during warm-up, then base * (q + 0.001 (1 - q))."""
    f = LrMultiplier("cosine", total_steps=110, warmup_steps=10, final_fraction=0.001)
    assert f(0) == 0.0
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 + 0.001 * 0.5)  # halfway through the 100 decay steps
    assert f(110) == pytest.approx(0.001)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # monotone decay


def test_warmup_then_constant():
    f = LrMultiplier("constant", total_steps=20, warmup_steps=4)
    assert [f(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_warmup_as_long_as_training_does_not_divide_by_zero():
    f = LrMultiplier("cosine", total_steps=4, warmup_steps=4)
    assert [f(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_unknown_schedule_is_refused():
    with pytest.raises(TrainingError, match="constant, cosine"):
        LrMultiplier("step", total_steps=10)


def test_scheduler_sets_per_step_rates_and_resumes_exactly():
    def make():
        param = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.SGD([param], lr=0.5)
        return opt, build_scheduler(opt, "cosine", steps_per_epoch=4, epochs=5, warmup_epochs=0.5)

    opt, sched = make()
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    f = LrMultiplier("cosine", total_steps=20, warmup_steps=2)
    assert seen == pytest.approx([0.5 * f(s) for s in range(20)])

    opt_a, sched_a = make()
    for _ in range(7):
        opt_a.step()
        sched_a.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt_a.state_dict(), "sched": sched_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    opt_b, sched_b = make()
    opt_b.load_state_dict(saved["opt"])
    sched_b.load_state_dict(saved["sched"])
    rest_a, rest_b = [], []
    for opt_x, sched_x, rest in ((opt_a, sched_a, rest_a), (opt_b, sched_b, rest_b)):
        for _ in range(13):
            rest.append(opt_x.param_groups[0]["lr"])
            opt_x.step()
            sched_x.step()
    assert rest_a == rest_b == pytest.approx(seen[7:])
