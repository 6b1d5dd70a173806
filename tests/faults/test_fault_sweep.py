"""Fail each durable write of a tiny ``grappa run`` in turn; a rerun must end as if nothing happened.

The reference (``conftest.py``) records every write of an uninterrupted run. For each write
N a fresh copy of the project runs with the N-th write failing (a full disk, or Ctrl-C),
then runs again unfaulted: its results must be bit-identical to the reference, no temporary
file may remain, and the plan ``grappa status`` prints must have announced exactly the work
the rerun did.
"""

from __future__ import annotations

import shutil

import pytest

from tests.faults.conftest import leftovers, outputs


def _faulted_then_rerun(reference, tmp_path, at: int, kind: str) -> None:
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.run import run_pipeline
    from grappa_cli.project import Project
    from grappa_cli.storage import faults

    root = tmp_path / f"{kind}-{at}"
    shutil.copytree(reference.fresh, root)
    project = Project(root)
    expected = KeyboardInterrupt if kind == "interrupt" else OSError
    with faults.arm(at, kind) as plan, pytest.raises(expected):
        run_pipeline(project)
        raise AssertionError(f"write {at} ({reference.writes[at - 1]}) was never reached")  # pragma: no cover
    assert plan.fired, f"write {at} did not fail"
    announced = {node.id for node in planner.build(project).todo()}
    outcome = run_pipeline(project)
    done = _done_ids(outcome)
    assert set(outcome.planned) == announced
    assert announced == done, f"after failing write {at} ({plan.fired}) status announced {sorted(announced)}, " \
                              f"run did {sorted(done)}"
    assert not leftovers(root), f"after failing write {at} ({plan.fired}): {leftovers(root)}"
    got = outputs(project)
    differ = sorted(k for k in set(got) | set(reference.outputs) if got.get(k) != reference.outputs.get(k))
    assert not differ, f"after failing write {at} ({plan.fired}) these results differ: {differ}"
    assert not run_pipeline(project).changed


def _done_ids(outcome) -> set[str]:
    """What ``grappa run`` did, as the planner's artifact ids."""
    prefix = {"cluster": "clusters/", "adapt": "adaptors/", "fuse": "fusion/"}
    ids: set[str] = set()
    for stage in outcome.stages:
        for item in stage.done:
            if stage.stage == "extract":
                ids.add(item)
            elif stage.stage == "eval":
                model, task = item.split("/")
                ids.add(f"results/{model.replace(':', '-')}/{task}")
            elif stage.stage == "report":
                ids.add("reports/table2")
            else:
                ids.add(prefix[stage.stage] + item)
    return ids


def _points(reference, stride: int) -> list[int]:
    return list(range(1, len(reference.writes) + 1, stride))


def test_the_reference_run_writes_every_kind_of_artifact(reference) -> None:
    kinds = {w.split("/")[0] if w.startswith("store.zarr") else w.rsplit("/", 2)[-2] for w in reference.writes}
    assert "store.zarr" in kinds and {"adaptors", "fusion", "adapt-k2"} <= kinds
    assert any(w.endswith("results/backbone/shapes.json") for w in reference.writes)
    assert any(w.endswith("table2.md") for w in reference.writes)


def test_a_fault_at_every_twentieth_write_changes_no_result(reference, tmp_path) -> None:
    for i, at in enumerate(_points(reference, 20)):
        _faulted_then_rerun(reference, tmp_path, at, ("enospc", "interrupt")[i % 2])


@pytest.mark.slow
@pytest.mark.timeout(1500)  # one faulted run and one rerun per write: 580 s on 2 idle cores
def test_a_full_disk_or_ctrl_c_at_any_write_changes_no_result(reference, tmp_path) -> None:
    """Every write fails once: odd ones as a full disk, even ones as Ctrl-C."""
    for at in _points(reference, 1):
        _faulted_then_rerun(reference, tmp_path, at, ("enospc", "interrupt")[(at + 1) % 2])
