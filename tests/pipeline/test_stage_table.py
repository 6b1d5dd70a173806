"""Each stage is declared once (``pipeline.stage_table``): run, status, the estimate and the planner read that table."""

from __future__ import annotations


def test_the_table_lists_every_stage_once_in_run_order() -> None:
    from grappa_cli.pipeline import graph, rates, run, runners
    from grappa_cli.pipeline.stage import Stage
    from grappa_cli.pipeline.stage_table import spec, specs

    table = specs()
    assert tuple(entry.stage for entry in table) == tuple(Stage)
    assert run.STAGES == tuple(Stage) == ("extract", "cluster", "adapt", "fuse", "eval", "report")
    assert tuple(run._RUNNERS) == tuple(Stage)
    for entry in table:
        assert spec(entry.stage) is entry and spec(entry.stage.value) is entry
        assert entry.command == f"grappa {entry.stage.value}"
        assert entry.plan.__module__ == graph.__name__
        assert entry.run.__module__ == runners.__name__
        assert entry.price is None or entry.price.__module__ == rates.__name__
    priced = {entry.stage for entry in table if entry.price is not None}
    assert priced == {Stage.extract, Stage.adapt, Stage.fuse, Stage.eval}


def test_plan_and_status_speak_of_table_stages_only(tiny_project) -> None:
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.stage import Stage
    from grappa_cli.pipeline.status import collect

    plan = planner.build(tiny_project)
    assert {node.stage for node in plan.nodes} <= set(Stage)
    assert plan.first_stage() is Stage.extract
    status = collect(tiny_project)
    assert status.next_steps[-1].startswith("run `grappa extract`")
    assert {item.stage for item in status.artifacts} <= {*Stage, "cache", "index"}
