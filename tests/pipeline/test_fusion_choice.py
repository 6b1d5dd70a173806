"""``[fuse] strategies = "auto"``: Grappa-avg alone on a CPU, Grappa-avg and Grappa-N on a GPU; the
plan, ``grappa status`` and ``grappa run`` resolve it the same way and say why."""

from __future__ import annotations

import json

import pytest

from grappa_cli.config import update_file
from grappa_cli.errors import ConfigError
from grappa_cli.pipeline.fusion_choice import auto_strategies, fusion_strategies


def test_auto_builds_grappa_n_on_a_gpu_only() -> None:
    cpu, gpu = auto_strategies("cpu"), auto_strategies("cuda")
    assert cpu.strategies == ["avg"] and gpu.strategies == ["avg", "neighbor"]
    assert cpu.reason is not None and "CPU" in cpu.reason and "grappa fuse --strategy neighbor" in cpu.reason
    assert gpu.reason is not None and "Grappa-N" in gpu.reason


def test_a_listed_choice_is_kept_on_any_device(tiny_project) -> None:
    update_file(tiny_project.config_path, lambda doc: doc["fuse"].__setitem__("strategies", ["neighbor", "avg"]))
    choice = fusion_strategies(tiny_project.config(), "cpu")
    assert choice.strategies == ["neighbor", "avg"] and choice.reason is None


def test_auto_is_the_default_and_other_values_are_refused(tiny_project) -> None:
    assert tiny_project.config().fuse.strategies == "auto"  # what `grappa init` writes
    text = tiny_project.config_path.read_text()
    tiny_project.config_path.write_text(text.replace('strategies = "auto"', 'strategies = "all"'))
    with pytest.raises(ConfigError, match=r"fuse\.strategies: must be a list of strings or \"auto\" \(got 'all'\)"):
        tiny_project.config()


def test_the_plan_and_status_on_a_cpu_build_grappa_avg_alone_and_say_why(tiny_project, cli) -> None:
    from grappa_cli.pipeline import planner

    plan = planner.build(tiny_project)
    ids = {node.id for node in plan.nodes}
    assert "fusion/avg" in ids and "fusion/neighbor" not in ids
    assert not any(i.startswith("results/fused-neighbor/") for i in ids)
    assert any(i.startswith("results/fused-avg/") for i in ids)
    assert plan.fusion == auto_strategies("cpu")

    shown = cli("-C", tiny_project.root, "status", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["chosen"][-1] == auto_strategies("cpu").reason
    text = cli("-C", tiny_project.root, "status")
    assert "Chosen for this project and machine: - " in " ".join(text.stdout.split())
    assert "[fuse] strategies = \"auto\" on a CPU" in " ".join(text.stdout.split())

    update_file(tiny_project.config_path, lambda doc: doc["fuse"].__setitem__("strategies", ["avg", "neighbor"]))
    listed = planner.build(tiny_project)
    assert {"fusion/avg", "fusion/neighbor"} <= {node.id for node in listed.nodes} and listed.fusion.reason is None
    chosen = json.loads(cli("-C", tiny_project.root, "status", "--json").stdout)["chosen"]
    assert not any("strategies" in line for line in chosen)


def test_run_says_what_auto_chose_before_it_starts(tiny_project, cli) -> None:
    result = cli("-C", tiny_project.root, "run", "--until", "extract")
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert f"Chosen for this machine: {auto_strategies('cpu').reason}." in said
    assert said.index("Chosen for this machine") < said.index("extract")


def test_status_says_what_the_number_of_images_chose(tiny_project) -> None:
    from grappa_cli.pipeline import planner
    from grappa_cli.pipeline.choices import chosen_settings

    def edit(doc):
        doc["cluster"]["k"] = "auto"
        doc["adapt"]["batch_size"] = 8
        doc["adapt"]["epochs"] = 1
        doc["adapt"]["min_steps"] = 10

    update_file(tiny_project.config_path, edit)
    config = tiny_project.config()
    plan = planner.build(tiny_project, config)
    n = plan.increments[0].images
    assert n == 12  # the fixture's training classes: the first 2 of 4, 6 images each
    # batch min(8, max(32, 12 // 16), 12) = 8: 1 step an epoch; 10 steps want 10 epochs, capped at 3 x 1
    lines = chosen_settings(config, plan)
    ks = ", ".join(map(str, plan.increments[0].ks))
    assert lines[0].startswith(f'[cluster] k = "auto" for 12 training images: {ks} (')
    assert lines[1] == ("[adapt] each set trains 3 steps: batches of 8, 3 epochs of 12 images "
                        "(min_steps = 10 raises the configured 1 epochs, to at most 3x)")
    assert lines[2] == auto_strategies("cpu").reason


def test_a_project_configured_for_a_gpu_plans_grappa_n_wherever_it_is_read(tiny_project) -> None:
    from grappa_cli.pipeline import planner

    update_file(tiny_project.config_path, lambda doc: doc["runtime"].__setitem__("device", "cuda"))
    plan = planner.build(tiny_project)  # on a machine without CUDA too: the plan reads, it does not run
    assert plan.fusion == auto_strategies("cuda")
    assert {"fusion/avg", "fusion/neighbor"} <= {node.id for node in plan.nodes}
    assert fusion_strategies(tiny_project.config(), "cpu") == auto_strategies("cpu")  # --device cpu wins
