"""`grappa eval`: cached test embeddings per model, metrics, provenance, staleness, errors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from grappa_cli.hookspecs import hookimpl
from grappa_cli.records import artifacts
from grappa_cli.records import provenance as prov
from grappa_cli.retrieval.metrics import retrieval_metrics
from tests.conftest import rewrite_adaptor_weights

MODELS = ("backbone", "adaptor:k2", "adaptor:k4", "fused:avg")


def _doc(project, model: str, task: str = "shapes") -> dict:
    return json.loads((project.results_dir / model.replace(":", "-") / f"{task}.json").read_text())


def _direct_metrics(project, key: str, recall_at=(1,)) -> dict:
    """retrieval_metrics on the stored embeddings of ``key`` (valid rows), computed here."""
    store = project.store(mode="r")
    valid = store.read(f"{key}/valid")
    embeddings = store.read(f"{key}/embeddings").astype(np.float32)[valid]
    labels = store.read(f"{key}/labels")[valid]
    return retrieval_metrics(embeddings, labels, recall_at=recall_at)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _status(project, cli) -> dict[str, str]:
    result = cli("-C", project.root, "status", "--json")
    assert result.exit_code == 0, result.stderr
    return {a["id"]: a["state"] for a in json.loads(result.stdout)["artifacts"]}


def test_results_equal_metrics_of_the_stored_embeddings(evaluated_project, cli) -> None:
    project = evaluated_project
    store = project.store(mode="r")
    test_fp = store.provenance("features/test/shapes")["fingerprint"]
    seen = {}
    for model in MODELS:
        doc = _doc(project, model)
        assert doc["model"] == model and doc["task"] == "shapes" and not doc["uses_labels"]
        key = "features/test/shapes" if model == "backbone" else f"eval/{model.replace(':', '-')}/shapes"
        assert doc["embeddings"] == key
        expected = _direct_metrics(project, key)
        assert doc["metrics"] == {k: v for k, v in expected.items() if k not in ("num_queries", "num_skipped")}
        assert set(doc["metrics"]) == {"map@r", "r_precision", "recall@1"}
        assert doc["num_queries"] == expected["num_queries"] == 12 and doc["num_skipped"] == 0
        assert doc["images"] == 12 and doc["unreadable"] == 0
        assert 0.0 < doc["metrics"]["map@r"] < 1.0
        provenance = doc["provenance"]
        assert provenance["complete"] and provenance["versions"] and provenance["created"]
        expected_inputs = {key: store.provenance(key)["fingerprint"]}
        if model != "backbone":
            artifact = {"adaptor:k2": "adaptors/k2", "adaptor:k4": "adaptors/k4", "fused:avg": "fusion/avg"}[model]
            expected_inputs[artifact] = artifacts.fingerprint(project, artifact)
            # the bytes of every file the model is built from: a fused model's are its own and its sets'
            files = [artifact, "adaptors/k2", "adaptors/k4"] if model == "fused:avg" else [artifact]
            expected_inputs["weights"] = prov.fingerprint({f: _sha256(artifacts.checkpoint_path(project, f))
                                                           for f in files})
            eval_record = store.provenance(key)
            assert eval_record["inputs"][artifact] == expected_inputs[artifact]
            assert eval_record["params"]["model"] == model
        assert provenance["inputs"] == expected_inputs
        seen[model] = store.read(f"{key}/embeddings")
    # the backbone reused features/test: no second copy of the same features
    assert not store.exists("eval/backbone")
    assert test_fp == store.provenance("features/test/shapes")["fingerprint"]
    # the models really differ (trained adaptors change the features)
    assert not np.array_equal(seen["adaptor:k2"], seen["backbone"])
    assert not np.array_equal(seen["adaptor:k2"], seen["adaptor:k4"])
    states = _status(project, cli)
    assert all(states[f"results/{m.replace(':', '-')}/shapes"] == "complete" for m in MODELS)


def test_stored_embeddings_are_the_models_outputs(evaluated_project) -> None:
    from PIL import Image

    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
    from grappa_cli.pipeline.stages import models

    project = evaluated_project
    store = project.store(mode="r")
    paths = store.read("eval/fused-avg/shapes/paths")
    backbone = build_backbone(BackboneSpec.from_config(project.config()))
    model = models.load(project, models.parse("fused:avg"), backbone).eval()
    transform = eval_transform(backbone.data_config)
    rows = [0, 5, 11]
    images = torch.stack([transform(Image.open(paths[i]).convert("RGB")) for i in rows])
    with torch.inference_mode():
        expected = model(images).numpy()
    stored = store.read("eval/fused-avg/shapes/embeddings")[rows].astype(np.float32)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)  # stored as float16


def test_rerun_skips_force_redoes_and_recall_at_is_a_parameter(evaluated_project, cli) -> None:
    from grappa_cli.config import update_file

    project = evaluated_project
    before = {m: _doc(project, m)["provenance"]["created"] for m in MODELS}
    result = cli("-C", project.root, "eval", "--json")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)
    assert [(r["model"], r["computed"], r["embedded"]) for r in run["results"]] == [(m, False, False) for m in MODELS]
    assert {m: _doc(project, m)["provenance"]["created"] for m in MODELS} == before

    result = cli("-C", project.root, "eval", "--model", "adaptor:k4,backbone", "--force", "--json")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)
    # --force re-embeds with the model; the backbone's features/test belong to `grappa extract`
    assert [(r["model"], r["computed"], r["embedded"]) for r in run["results"]] == [
        ("adaptor:k4", True, True), ("backbone", True, False)]

    def edit(doc):
        doc["eval"]["recall_at"] = [1, 5]

    update_file(project.config_path, edit)
    result = cli("-C", project.root, "eval", "--model", "adaptor:k2", "--json")
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["results"][0]
    assert entry["computed"] and not entry["embedded"]  # new metric list, same embeddings
    expected = _direct_metrics(project, "eval/adaptor-k2/shapes", recall_at=(1, 5))
    assert _doc(project, "adaptor:k2")["metrics"]["recall@5"] == expected["recall@5"]


def test_retraining_a_model_makes_its_results_stale_and_eval_redoes_them(evaluated_project, cli) -> None:
    project = evaluated_project
    old = project.store(mode="r").read("eval/adaptor-k2/shapes/embeddings")
    assert cli("-C", project.root, "adapt", "--k", "2", "--force", "--epochs", "2").exit_code == 0
    states = _status(project, cli)
    assert states["results/adaptor-k2/shapes"] == "stale"
    assert states["results/adaptor-k4/shapes"] == "complete"
    assert states["fusion/avg"] == "stale"  # its input adaptors/k2 changed

    result = cli("-C", project.root, "eval", "--json")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)
    done = {r["model"]: (r["computed"], r["embedded"]) for r in run["results"]}
    assert done == {"backbone": (False, False), "adaptor:k2": (True, True), "adaptor:k4": (False, False)}
    assert [s["model"] for s in run["skipped_models"]] == ["fused:avg"]
    assert "fused:avg is stale: adaptors/k2 changed" in result.stderr and "grappa fuse --strategy avg" in result.stderr
    new = project.store(mode="r").read("eval/adaptor-k2/shapes/embeddings")
    assert not np.array_equal(old, new)
    doc = _doc(project, "adaptor:k2")
    expected = _direct_metrics(project, "eval/adaptor-k2/shapes")
    assert doc["metrics"]["map@r"] == expected["map@r"]
    assert doc["provenance"]["inputs"]["adaptors/k2"] == artifacts.fingerprint(project, "adaptors/k2")
    # scored on the retrained set, yet not what `grappa run` keeps: the set has 2 epochs, grappa.toml says 1
    assert _status(project, cli)["results/adaptor-k2/shapes"] == "stale"
    assert _status(project, cli)["adaptors/k2"] == "stale"

    # naming the stale model is an error with the fix
    result = cli("-C", project.root, "eval", "--model", "fused:avg")
    assert result.exit_code == 1 and "fused:avg is stale" in result.stderr
    assert "rerun `grappa fuse --strategy avg --force`" in result.stderr
    assert cli("-C", project.root, "fuse", "--strategy", "avg", "--force").exit_code == 0
    result = cli("-C", project.root, "eval", "--model", "fused:avg", "--json")
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["results"][0]
    assert entry["computed"] and entry["embedded"]
    assert _doc(project, "fused:avg")["provenance"]["inputs"]["fusion/avg"] == artifacts.fingerprint(project,
                                                                                                  "fusion/avg")


def test_backbone_embeds_itself_when_features_test_do_not_match(evaluated_project, cli) -> None:
    project = evaluated_project
    reference = _doc(project, "backbone")["metrics"]
    store = project.store()
    store.delete("features/test/shapes")
    del store
    result = cli("-C", project.root, "eval", "--model", "backbone", "--json")
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["results"][0]
    assert entry["embeddings"] == "eval/backbone/shapes" and entry["embedded"]
    assert _doc(project, "backbone")["metrics"] == reference  # the same function of the same images
    assert _doc(project, "backbone")["provenance"]["inputs"] == {
        "eval/backbone/shapes": project.store(mode="r").provenance("eval/backbone/shapes")["fingerprint"]}


def test_table_and_json_document(evaluated_project, cli) -> None:
    result = cli("-C", evaluated_project.root, "eval")
    assert result.exit_code == 0, result.stderr
    for label in ("M (backbone)", "M + P1 (k2)", "M + P2 (k4)", "Oracle (O)", "Grappa-avg"):
        assert label in result.stdout
    doc = _doc(evaluated_project, "adaptor:k4")
    assert f"{100 * doc['metrics']['r_precision']:.1f}" in result.stdout
    assert "already current" in result.stderr

    result = cli("-C", evaluated_project.root, "eval", "--task", "shapes", "--json")
    run = json.loads(result.stdout)
    assert run["tasks"] == ["shapes"] and run["models"] == list(MODELS)
    sets = {m: _doc(evaluated_project, m)["metrics"] for m in ("adaptor:k2", "adaptor:k4")}
    best = max(sets, key=lambda m: (sets[m]["r_precision"], sets[m]["map@r"], -int(m.split(":k")[1])))
    assert run["oracle"]["shapes"]["model"] == best
    assert run["oracle"]["shapes"]["metrics"] == sets[best]


@pytest.mark.parametrize(("args", "code", "message"), [
    (("--model", "adaptor:k8"), 1, "no model 'adaptor:k8' in this project (did you mean 'adaptor:k4'?)"),
    (("--model", "fusd:avg"), 2, "unknown model name 'fusd:avg'"),
    (("--task", "shape"), 1, "no task 'shape' in the configuration (did you mean 'shapes'?)"),
    (("--task", "mrt"), 1, "--task mrt needs the six MRT tasks configured; missing: aircraft"),
])
def test_unknown_model_or_task_is_one_line(fused_project, cli, args, code, message) -> None:
    result = cli("-C", fused_project.root, "eval", *args)
    assert result.exit_code == code
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("Error:")
    assert not fused_project.results_dir.exists() or not any(fused_project.results_dir.iterdir())


class _FirstHit:
    """A plain metric plugin: the rank of the first relevant neighbour (within the depth)."""

    name = "first_hit"
    description = "rank of the first relevant neighbour"

    def depth(self, max_r: int) -> int:
        return 3

    def compute(self, neighbors):
        relevant = neighbors.relevant
        return np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, 4).astype(float)


class _Plugin:
    @hookimpl
    def register_metrics(self, register):
        register(_FirstHit())


@pytest.fixture
def metric_plugin():
    from grappa_cli.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.register(_Plugin(), name="test-first-hit-metric")
    yield
    pm.unregister(name="test-first-hit-metric")


def test_installed_metric_plugins_are_evaluated(evaluated_project, cli, metric_plugin) -> None:
    result = cli("-C", evaluated_project.root, "eval", "--model", "adaptor:k4", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["computed"]  # a new metric makes the old result stale
    doc = _doc(evaluated_project, "adaptor:k4")
    store = evaluated_project.store(mode="r")
    valid = store.read("eval/adaptor-k4/shapes/valid")
    expected = retrieval_metrics(store.read("eval/adaptor-k4/shapes/embeddings").astype(np.float32)[valid],
                                 store.read("eval/adaptor-k4/shapes/labels")[valid], metrics=[_FirstHit()],
                                 recall_at=())
    assert doc["metrics"]["first_hit"] == expected["first_hit"]
    assert doc["provenance"]["params"]["metrics"] == ["map@r", "r_precision", "first_hit", "recall@1"]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_match_one(evaluated_project) -> None:
    import os
    import subprocess
    import sys

    project = evaluated_project
    store = project.store()
    reference = store.read("eval/adaptor-k2/shapes/embeddings")
    metrics = _doc(project, "adaptor:k2")["metrics"]
    store.delete("eval/adaptor-k2")  # the others stay complete: ranks must agree on what is left to do
    del store
    env = {**os.environ, "GRAPPA_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "grappa_cli", "-C", str(project.root), "eval", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout)  # rank 0 alone prints
    done = {r["model"]: (r["computed"], r["embedded"]) for r in run["results"]}
    assert done == {"backbone": (False, False), "adaptor:k2": (True, True), "adaptor:k4": (False, False),
                    "fused:avg": (False, False)}
    store = project.store(mode="r")
    np.testing.assert_array_equal(store.read("eval/adaptor-k2/shapes/embeddings"), reference)
    assert _doc(project, "adaptor:k2")["metrics"] == metrics


def test_other_weights_under_the_same_settings_are_evaluated_anew(evaluated_project, cli) -> None:
    project = evaluated_project
    store = project.store(mode="r")
    trained = [m for m in MODELS if m != "backbone"]  # the backbone is scored on features/test
    old = {m: store.read(f"eval/{m.replace(':', '-')}/shapes/embeddings") for m in trained}
    fingerprint = artifacts.fingerprint(project, "adaptors/k4")
    rewrite_adaptor_weights(project, "k4")
    assert artifacts.fingerprint(project, "adaptors/k4") == fingerprint  # the settings did not change

    result = cli("-C", project.root, "status", "--json")
    assert result.exit_code == 0, result.stderr
    listed = {a["id"]: a for a in json.loads(result.stdout)["artifacts"]}
    assert listed["adaptors/k4"]["state"] == "complete" and listed["fusion/avg"]["state"] == "complete"
    # the set's own results and those of the fusion over it describe the old weights
    for model in ("adaptor-k4", "fused-avg"):
        assert listed[f"results/{model}/shapes"]["state"] == "stale"
        assert "rewritten" in json.dumps(listed[f"results/{model}/shapes"])
    for model in ("adaptor-k2", "backbone"):
        assert listed[f"results/{model}/shapes"]["state"] == "complete"

    result = cli("-C", project.root, "eval", "--json")
    assert result.exit_code == 0, result.stderr
    done = {r["model"]: (r["computed"], r["embedded"]) for r in json.loads(result.stdout)["results"]}
    assert done == {"backbone": (False, False), "adaptor:k2": (False, False),
                    "adaptor:k4": (True, True), "fused:avg": (True, True)}
    store = project.store(mode="r")
    for model in trained:
        new = store.read(f"eval/{model.replace(':', '-')}/shapes/embeddings")
        assert np.array_equal(old[model], new) == (model == "adaptor:k2")
        expected = _direct_metrics(project, f"eval/{model.replace(':', '-')}/shapes")
        assert _doc(project, model)["metrics"]["map@r"] == expected["map@r"]
    states = _status(project, cli)
    assert all(states[f"results/{m.replace(':', '-')}/shapes"] == "complete" for m in MODELS), states
    again = json.loads(cli("-C", project.root, "eval", "--json").stdout)["results"]
    assert not any(r["computed"] or r["embedded"] for r in again)


def test_results_from_before_the_weights_digest_are_redone_and_say_why(evaluated_project, cli) -> None:
    project = evaluated_project
    path = project.results_dir / "adaptor-k2" / "shapes.json"
    doc = json.loads(path.read_text())
    del doc["provenance"]["inputs"]["weights"]  # as an older grappa wrote it
    path.write_text(json.dumps(doc))
    result = cli("-C", project.root, "status", "--json")
    listed = {a["id"]: a for a in json.loads(result.stdout)["artifacts"]}
    entry = listed["results/adaptor-k2/shapes"]
    assert entry["state"] == "stale" and "older grappa that did not record weights" in json.dumps(entry)
    assert "rewritten" not in json.dumps(entry)
    assert listed["results/adaptor-k4/shapes"]["state"] == "complete"
