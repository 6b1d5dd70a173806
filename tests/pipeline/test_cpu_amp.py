"""``[runtime] cpu_amp``: bf16 autocast on the CPU, in the fingerprints only when it is on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grappa_cli.records import artifacts
from grappa_cli.runtime import Precision, autocast, precision_params


def test_the_cpu_runs_bf16_only_when_cpu_amp_asks_for_it() -> None:
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    cpu = torch.device("cpu")
    with autocast(cpu, True):  # a plain bool is [runtime] amp: CUDA only
        assert layer(x).dtype == torch.float32
    with autocast(cpu, Precision(cuda=True, cpu=False)):
        assert layer(x).dtype == torch.float32
    with autocast(cpu, Precision(cuda=False, cpu=True)):
        assert layer(x).dtype == torch.bfloat16
    assert Precision(cuda=True, cpu=False).on(torch.device("cuda"))
    assert not Precision(cuda=False, cpu=True).on(torch.device("cuda"))


def test_precision_and_fingerprint_entries_follow_the_runtime_section(tiny_project) -> None:
    from grappa_cli.config import update_file

    config = tiny_project.config()
    assert Precision.of(config.runtime) == Precision(cuda=True, cpu=False)
    assert precision_params(config.runtime) == {}  # off: fingerprints as before the setting existed

    def on(doc):
        doc["runtime"]["cpu_amp"] = True
        doc["runtime"]["amp"] = False

    update_file(tiny_project.config_path, on)
    config = tiny_project.config()
    assert Precision.of(config.runtime) == Precision(cuda=False, cpu=True)
    assert precision_params(config.runtime) == {"cpu_amp": True}


def test_the_note_says_what_cpu_amp_does_here_and_warns_without_bf16_instructions(tiny_project,
                                                                                  monkeypatch) -> None:
    from grappa_cli import runtime
    from grappa_cli.config import update_file
    from grappa_cli.pipeline.choices import cpu_precision_note

    assert cpu_precision_note(tiny_project.config()) is None  # off

    def on(doc):
        doc["runtime"]["cpu_amp"] = True

    update_file(tiny_project.config_path, on)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    note = cpu_precision_note(tiny_project.config())
    assert note is not None and note.startswith("[runtime] cpu_amp = true: models run under bf16")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    warning = cpu_precision_note(tiny_project.config())
    assert warning is not None and warning.startswith("Warning:") and "set cpu_amp = false" in warning


def _features(project, key: str = "features/train") -> np.ndarray:
    return np.asarray(project.store().read(f"{key}/embeddings"), dtype=np.float32)


def _records(project) -> dict[str, dict]:
    return {artifact: artifacts.record(project, artifact) or {}
            for artifact in ("features/train", "adaptors/k2", "fusion/avg")}


def test_turning_cpu_amp_on_and_off_reruns_every_stage_and_off_gives_the_float32_numbers(tiny_project, cli) -> None:
    """On: every result is stale (bf16 changes the numbers), the new ones close to float32's; off
    again: stale again, and the rerun gives the float32 results to the last bit."""
    from grappa_cli.config import update_file
    from grappa_cli.pipeline import planner

    def small(doc):
        doc["cluster"]["k"] = [2]
        doc["fuse"]["strategies"] = ["avg"]

    update_file(tiny_project.config_path, small)
    first = cli("-C", tiny_project.root, "run")
    assert first.exit_code == 0, first.stderr
    float32 = _features(tiny_project)
    float32_metrics = json.loads((tiny_project.results_dir / "fused-avg" / "shapes.json").read_text())["metrics"]
    assert all("cpu_amp" not in r.get("params", {}) for r in _records(tiny_project).values())

    def cpu_amp(value: bool):
        def edit(doc):
            doc["runtime"]["cpu_amp"] = value
        return edit

    update_file(tiny_project.config_path, cpu_amp(True))
    nodes = {n.id: n for n in planner.build(tiny_project).nodes}  # what `grappa status` shows
    assert nodes["features/train"].state == "stale" and "cpu_amp" in nodes["features/train"].reason
    assert nodes["adaptors/k2"].state == "stale" and nodes["fusion/avg"].state == "stale"
    on = cli("-C", tiny_project.root, "run", "--json")
    assert on.exit_code == 0, on.stderr
    done = {s["stage"]: s["done"] for s in json.loads(on.stdout)["stages"]}
    assert done["extract"] == ["features/train", "features/test/shapes"]
    assert done["adapt"] == ["k2"] and done["fuse"] == ["avg"] and len(done["eval"]) == 3
    assert all(r["params"].get("cpu_amp") is True for r in _records(tiny_project).values())
    bf16 = _features(tiny_project)
    assert not np.array_equal(bf16, float32)
    cosine = (bf16 * float32).sum(1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(float32, axis=1)
    assert cosine.min() > 0.99, cosine.min()  # bf16 keeps about three significant digits

    # before a set has trained, adaptation borrows the embedding rate, by bf16's own ratio here
    from grappa_cli.pipeline.rates import ADAPT_PER_EMBED_CPU_BF16, measured

    for path in [*tiny_project.adaptors_dir.glob("*.safetensors"), *tiny_project.fusion_dir.glob("*.safetensors")]:
        path.unlink()
    rates = measured(tiny_project, tiny_project.store(mode="r"))
    assert rates.adapt == pytest.approx(ADAPT_PER_EMBED_CPU_BF16 * rates.embed) and "adapt" in rates.rough

    update_file(tiny_project.config_path, cpu_amp(False))
    nodes = {n.id: n for n in planner.build(tiny_project).nodes}
    assert nodes["features/train"].state == "stale" and "cpu_amp" in nodes["features/train"].reason
    off = cli("-C", tiny_project.root, "run", "--json")
    assert off.exit_code == 0, off.stderr
    done = {s["stage"]: s["done"] for s in json.loads(off.stdout)["stages"]}
    assert done["extract"] == ["features/train", "features/test/shapes"] and done["adapt"] == ["k2"]
    np.testing.assert_array_equal(_features(tiny_project), float32)
    again = json.loads((tiny_project.results_dir / "fused-avg" / "shapes.json").read_text())["metrics"]
    assert again == float32_metrics
