"""`grappa report`: Table 2 rows and numbers, the oracle's choice, the paper's rows, the figures."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from grappa_cli.reporting import paper
from grappa_cli.reporting.results import StoredResult, default_of, oracle, order_models
from tests.reporting.conftest import write_result


@pytest.fixture
def empty_project(tmp_path):
    from grappa_cli.setup.init import create_project

    return create_project(tmp_path / "proj")


def _md_rows(text: str) -> list[list[str]]:
    """The table of a Markdown file as lists of stripped cells (header first, separator dropped)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def test_report_of_an_evaluated_project(evaluated_project, cli) -> None:
    project = evaluated_project
    result = cli("-C", project.root, "report")
    assert result.exit_code == 0, result.stderr
    reports = project.reports_dir
    for name in ("table2.md", "table2.csv", "fig4_per_task.png"):
        assert f"wrote {reports / name}" in result.stdout
    rows = _md_rows((reports / "table2.md").read_text())
    assert rows[0] == ["Model", "shapes RP", "shapes mAP"]
    labels = [r[0] for r in rows[1:]]
    assert labels == ["M (backbone)", "*Results using only a single set of pseudo-granularity adaptors*",
                      "M + P1 (k2)", "M + P2 (k4)", "Oracle (O) [selected on test labels]", "i.e. only",
                      "*Results using pseudo-granularity adaptors and fusion (M\\*)*",
                      "Grappa-avg", "vs. M (Grappa-avg)"]
    docs = {m: json.loads((project.results_dir / m.replace(":", "-") / "shapes.json").read_text())["metrics"]
            for m in ("backbone", "adaptor:k2", "adaptor:k4", "fused:avg")}
    by_label = {r[0]: r[1:] for r in rows[1:]}
    for label, model in (("M (backbone)", "backbone"), ("M + P1 (k2)", "adaptor:k2"),
                         ("M + P2 (k4)", "adaptor:k4"), ("Grappa-avg", "fused:avg")):
        metrics = docs[model]
        assert by_label[label] == [f"{100 * metrics['r_precision']:.1f}", f"{100 * metrics['map@r']:.1f}"]
    best = max(("adaptor:k2", "adaptor:k4"), key=lambda m: (docs[m]["r_precision"], docs[m]["map@r"],
                                                            -int(m.split(":k")[1])))
    assert by_label["Oracle (O) [selected on test labels]"] == by_label[
        "M + P1 (k2)" if best == "adaptor:k2" else "M + P2 (k4)"]
    assert by_label["i.e. only"][0].startswith("P1 (k2)" if best == "adaptor:k2" else "P2 (k4)")
    delta = 100 * (docs["fused:avg"]["r_precision"] - docs["backbone"]["r_precision"])
    arrow = "↑" if round(delta, 1) > 0 else "↓" if round(delta, 1) < 0 else "="
    assert by_label["vs. M (Grappa-avg)"][0] == f"({arrow}{abs(round(delta, 1)):.1f})"

    table = list(csv.DictReader(io.StringIO((reports / "table2.csv").read_text())))
    avg = next(r for r in table if r["model"] == "fused:avg" and r["kind"] == "model")
    assert float(avg["shapes:map@r"]) == pytest.approx(100 * docs["fused:avg"]["map@r"], abs=5e-5)
    assert [r["kind"] for r in table] == ["model", "model", "model", "oracle", "oracle_sets", "model", "delta"]
    # exactly one row is the default model: here the only fused model, Grappa-avg
    assert [r["model"] for r in table if r["default"] == "true"] == ["fused:avg"]
    assert {r["default"] for r in table} == {"true", "false"}

    with Image.open(reports / "fig4_per_task.png") as image:
        image.load()
        assert image.format == "PNG" and image.width > 300 and image.height > 300


def test_the_current_report_is_read_back_not_rendered_again(evaluated_project, monkeypatch) -> None:
    """What `grappa demo` prints after `grappa run` wrote the report: the same table and files."""
    from grappa_cli.reporting import report as report_mod

    options = report_mod.ReportOptions(html=False)
    assert report_mod.current_report(evaluated_project, options).files  # none yet: it writes one
    written = report_mod.report(evaluated_project, options)

    def refuse(*args, **kwargs):
        raise AssertionError("the current report was rendered again")

    monkeypatch.setattr(report_mod, "report", refuse)
    again = report_mod.current_report(evaluated_project, options)
    assert again.files == written.files
    assert report_mod.to_markdown(again.table) == report_mod.to_markdown(written.table) == (
        evaluated_project.reports_dir / "table2.md").read_text()
    # a result gone since makes the written report stale: it is rendered again
    next(evaluated_project.results_dir.glob("fused-avg/*.json")).unlink()
    with pytest.raises(AssertionError, match="rendered again"):
        report_mod.current_report(evaluated_project, options)


def test_examples_are_the_top5_of_each_model(evaluated_project, cli) -> None:
    from grappa_cli.retrieval.metrics import neighbors

    project = evaluated_project
    result = cli("-C", project.root, "report", "--examples", "--per-task", "3", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert str(project.reports_dir / "fig5_examples.png") in doc["files"]
    with Image.open(project.reports_dir / "fig5_examples.png") as image:
        image.load()
        assert image.format == "PNG"
    examples = doc["examples"]
    assert examples["model"] == "fused:avg"  # the only fused model
    store = project.store(mode="r")
    tops, gains = {}, {}
    for name, key in (("backbone", "features/test/shapes"), ("fused:avg", "eval/fused-avg/shapes")):
        valid = store.read(f"{key}/valid")
        labels = store.read(f"{key}/labels")[valid]
        paths = store.read(f"{key}/paths")[valid]
        for chunk in neighbors(store.read(f"{key}/embeddings").astype(np.float32)[valid], labels, depth=5):
            for q, found in zip(chunk.query_indices, chunk.indices, strict=True):
                tops[(name, str(paths[q]))] = [str(paths[i]) for i in found]
                gains[(name, str(paths[q]))] = int((labels[found] == labels[q]).sum())
    shown = examples["tasks"]["shapes"]
    assert len(shown) == 3
    for item in shown:
        assert item["backbone"] == tops[("backbone", item["query"])]
        assert item["fused:avg"] == tops[("fused:avg", item["query"])]
    gain = {q: gains[("fused:avg", q)] - gains[("backbone", q)] for (name, q) in gains if name == "backbone"}
    assert sorted((gain[i["query"]] for i in shown), reverse=True) == sorted(gain.values(), reverse=True)[:3]


def test_oracle_selection_rule(empty_project, cli) -> None:
    project = empty_project
    values = {
        "alpha": {"adaptor:k256": (0.30, 0.20), "adaptor:k1024": (0.35, 0.10), "adaptor:k4096": (0.34, 0.40)},
        "beta": {"adaptor:k256": (0.50, 0.20), "adaptor:k1024": (0.40, 0.90), "adaptor:k4096": (0.50, 0.25)},
        "gamma": {"adaptor:k256": (0.60, 0.30), "adaptor:k1024": (0.60, 0.30)},
        "delta": {"adaptor:k1024": (0.3001, 0.50), "adaptor:k4096": (0.3004, 0.10)},
    }
    for task, sets in values.items():
        for model, (rp, map_r) in sets.items():
            write_result(project, model, task, rp, map_r)
        write_result(project, "fused:neighbor", task, 0.99, 0.99)  # never the oracle: not a single set
    result = cli("-C", project.root, "report", "--json")
    assert result.exit_code == 0, result.stderr
    table = json.loads(result.stdout)["table"]
    chosen = {t: (c["model"], c["ties"]) for t, c in table["oracle"].items()}
    assert chosen == {"alpha": ("adaptor:k1024", []), "beta": ("adaptor:k4096", ["adaptor:k256"]),
                      "gamma": ("adaptor:k256", ["adaptor:k1024"]), "delta": ("adaptor:k4096", ["adaptor:k1024"])}
    oracle_row = next(r for r in table["rows"] if r["kind"] == "oracle")
    assert oracle_row["values"]["beta"] == {"r_precision": 50.0, "map@r": 25.0}
    sets_row = next(r for r in table["rows"] if r["kind"] == "oracle_sets")
    assert sets_row["text"] == {"alpha": "P2 (k1024)", "beta": "P3 (k4096) = P1", "gamma": "P1 (k256) = P2",
                                "delta": "P3 (k4096) = P2"}
    result = cli("-C", project.root, "report", "--json", "--oracle-metric", "map@r")
    by_map = {t: c["model"] for t, c in json.loads(result.stdout)["table"]["oracle"].items()}
    assert by_map == {"alpha": "adaptor:k4096", "beta": "adaptor:k1024", "gamma": "adaptor:k256",
                      "delta": "adaptor:k1024"}
    result = cli("-C", project.root, "report", "--oracle-metric", "recall@1")
    assert result.exit_code == 2 and "'recall@1' is not one of 'r_precision', 'map@r'" in result.stderr


def test_the_oracle_rule_on_the_papers_single_sets_gives_the_papers_oracle() -> None:
    from pathlib import Path

    results = []
    for row in paper.TABLE2:
        if row.model and row.model.startswith("adaptor:"):
            for task, (rp, map_r) in zip(paper.TASKS, row.values, strict=True):
                results.append(StoredResult(row.model, task, {"r_precision": rp / 100, "map@r": map_r / 100}, 1, 0,
                                            1, False, "", Path("-")))
    choices = oracle(results)
    assert {t: (round(100 * c.metrics["r_precision"], 1), round(100 * c.metrics["map@r"], 1))
            for t, c in choices.items()} == dict(zip(paper.TASKS, paper.row("Oracle (O)").values, strict=True))
    k = {m: f"P{i + 1}" for i, m in enumerate(f"adaptor:k{k}" for k in paper.K_VALUES)}
    names = {t: "-".join(k[m] for m in sorted([c.model, *c.ties], key=lambda m: int(m.split(":k")[1])))
             for t, c in choices.items()}
    # The paper's line names P5 for Food-101, whose printed maximum (29.6 / 18.4) is P4's.
    assert names == {**paper.ORACLE_SETS, "food101": "P4"}


def test_paper_constants_are_consistent() -> None:
    dino, grappa_n = paper.row("DINO (M)"), paper.row("Grappa-N")
    derived = tuple((round(n[0] - d[0], 1), round(n[1] - d[1], 1))
                    for d, n in zip(dino.values, grappa_n.values, strict=True))
    assert derived == paper.GRAPPA_N_VS_DINO
    assert len(paper.TABLE2) == 15 and [r.label for r in paper.TABLE2][3:11] == [f"M + P{i}" for i in range(1, 9)]
    assert [r.model for r in paper.TABLE2][3:11] == [f"adaptor:k{k}" for k in paper.K_VALUES]


def test_paper_rows_equal_the_constants(empty_project, cli) -> None:
    from grappa_cli.config import update_file

    project = empty_project

    def edit(doc):
        import tomlkit

        tasks = tomlkit.table(is_super_table=True)
        birds = tomlkit.table()
        birds["type"] = "cub"
        birds["root"] = "/nonexistent/CUB_200_2011"
        tasks["birds"] = birds
        doc["tasks"] = tasks

    update_file(project.config_path, edit)
    write_result(project, "backbone", "birds", 0.40, 0.30)
    write_result(project, "fused:neighbor", "birds", 0.45, 0.31)
    write_result(project, "backbone", "cars", 0.10, 0.05)  # not configured: matched by its name
    result = cli("-C", project.root, "report", "--paper", "--json")
    assert result.exit_code == 0, result.stderr
    table = json.loads(result.stdout)["table"]
    assert table["tasks"] == ["birds", "cars", "aircraft", "flowers", "food101", "products"]
    assert table["titles"]["aircraft"] == "Aircraft (paper only)"
    column = {"cub": "birds", "cars": "cars", "aircraft": "aircraft", "flowers": "flowers", "food101": "food101",
              "products": "products"}
    paper_rows = [r for r in table["rows"] if r["kind"] == "paper"]
    assert [r["label"] for r in paper_rows] == [f"paper: {r.label}" for r in paper.TABLE2]
    for mine, ref in zip(paper_rows, paper.TABLE2, strict=True):
        assert mine["values"] == {column[t]: {"r_precision": rp, "map@r": m}
                                  for t, (rp, m) in zip(paper.TASKS, ref.values, strict=True)}
    delta = next(r for r in table["rows"] if r["kind"] == "paper_delta")
    assert delta["values"]["birds"] == {"r_precision": 1.5, "map@r": 1.2}
    sets = next(r for r in table["rows"] if r["kind"] == "paper_oracle_sets")
    assert sets["text"] == {column[t]: v for t, v in paper.ORACLE_SETS.items()}
    # the user's own rows stay apart from the paper's, and the Markdown says whose numbers are whose
    text = (project.reports_dir / "table2.md").read_text()
    rows = {r[0]: r[1:] for r in _md_rows(text)}
    assert rows["paper: Grappa-N"][:4] == ["35.1", "24.1", "9.9", "4.0"]
    assert rows["M (backbone)"][:4] == ["40.0", "30.0", "10.0", "5.0"]
    assert rows["Grappa-N"][:2] == ["45.0", "31.0"] and rows["vs. M (Grappa-N)"][:2] == ["(↑5.0)", "(↑1.0)"]
    assert "not computed by this project" in text


def test_rows_follow_the_papers_order_and_mark_labels_and_stale(empty_project, cli) -> None:
    project = empty_project
    models = ["fused:custom", "fused:neighbor", "adaptor:k4096", "fused:supervised", "backbone", "fused:avg",
              "adaptor:k256", "fused:random", "fused:transform", "adaptor:k1024", "fused:single-random"]
    for i, model in enumerate(models):
        write_result(project, model, "alpha", 0.1 + 0.01 * i, 0.05, uses_labels=model == "fused:supervised")
    stale = write_result(project, "adaptor:k256", "beta", 0.2, 0.1)
    doc = json.loads(stale.read_text())
    doc["provenance"]["inputs"] = {"eval/adaptor-k256/beta": "0123456789abcdef"}  # no such embeddings now
    stale.write_text(json.dumps(doc))
    result = cli("-C", project.root, "report")
    assert result.exit_code == 0, result.stderr
    rows = _md_rows((project.reports_dir / "table2.md").read_text())
    labels = [r[0] for r in rows[1:] if not r[0].startswith(("*", "vs. M", "i.e."))]
    assert labels == ["M (backbone)", "M + A1", "M\\* (random)", "M + P1 (k256)", "M + P2 (k1024)", "M + P3 (k4096)",
                      "Oracle (O) [selected on test labels]", "Grappa-avg", "Grappa-T", "Grappa-N", "fused:custom",
                      "fused:supervised [uses labels]"]
    deltas = [r[0] for r in rows[1:] if r[0].startswith("vs. M")]
    assert deltas == ["vs. M (Grappa-avg)", "vs. M (Grappa-T)", "vs. M (Grappa-N)", "vs. M (fused:custom)",
                      "vs. M (fused:supervised)"]
    by_label = {r[0]: r[1:] for r in rows}
    assert by_label["M + P1 (k256)"] == ["16.0", "5.0", "20.0†", "10.0†"]
    assert by_label["M (backbone)"] == ["14.0", "5.0", "-", "-"]
    text = (project.reports_dir / "table2.md").read_text()
    assert "[uses labels]: trained with class labels" in text and "†: stale result" in text
    with Image.open(project.reports_dir / "fig4_per_task.png") as image:
        image.load()
        assert image.format == "PNG"
    assert order_models(models, {"fused:supervised": True}) == [
        "backbone", "fused:single-random", "fused:random", "adaptor:k256", "adaptor:k1024", "adaptor:k4096",
        "fused:avg", "fused:transform", "fused:neighbor", "fused:custom", "fused:supervised"]


def test_the_default_model_is_grappa_avg_else_the_first_trained_fused_model() -> None:
    everything = ["backbone", "adaptor:k16", "fused:route", "fused:neighbor", "fused:transform", "fused:avg"]
    assert default_of(everything) == "fused:avg"
    assert default_of(m for m in everything if m != "fused:avg") == "fused:neighbor"
    assert default_of(["fused:transform", "fused:route", "backbone"]) == "fused:route"
    assert default_of(["fused:supervised", "adaptor:k16", "backbone"]) == "backbone"  # labels never by default


def test_report_without_results_says_run_eval(empty_project, cli) -> None:
    result = cli("-C", empty_project.root, "report")
    assert result.exit_code == 1 and "no results yet" in result.stderr and "grappa eval" in result.stderr
    result = cli("-C", empty_project.root, "report", "--examples")
    assert result.exit_code == 1
