"""``reports/index.html``: structure, offline-ness, and retrieval marks equal to the stored ranking.

The tiny evaluated project of ``tests/reporting/conftest.py`` (one task, backbone, two single sets,
Grappa-avg). The browser test is ``test_html_browser.py``.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from grappa_cli.reporting import galleries


class _Collector(HTMLParser):
    """Every tag with its attributes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _parse(path: Path) -> list[tuple[str, dict[str, str]]]:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector.tags


@pytest.fixture
def reported(evaluated_project, cli):
    done = cli("-C", evaluated_project.root, "report")
    assert done.exit_code == 0, done.stderr
    return evaluated_project


def test_the_page_is_self_contained_and_every_image_has_alt_text_and_decodes(reported) -> None:
    from PIL import Image

    page = reported.reports_dir / "index.html"
    text = page.read_text(encoding="utf-8")
    tags = _parse(page)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe")]  # no script, no external style
    assert not re.search(r"(src|href)\s*=\s*\"(https?:)?//", text)  # nothing from the network
    images = [a for t, a in tags if t == "img"]
    assert len(images) > 30
    for attrs in images:
        assert attrs.get("alt", "").strip(), attrs
        target = reported.reports_dir / attrs["src"]
        assert target.resolve().is_relative_to(reported.reports_dir.resolve())
        with Image.open(target) as img:
            img.load()
            assert min(img.size) > 0
    ids = {a.get("id") for _, a in tags}
    assert {"table2", "figures", "galleries", "granularities", "curves"} <= ids
    # Table 2 on the page has the numbers of table2.md
    markdown = (reported.reports_dir / "table2.md").read_text()
    backbone_md = next(line for line in markdown.splitlines() if line.startswith("| M (backbone)"))
    numbers = [c.strip() for c in backbone_md.strip("|").split("|")[1:]]
    row = re.search(r"<tr><td>M \(backbone\)</td>(.*?)</tr>", text).group(1)
    assert re.findall(r'<td class="num">([^<]*)</td>', row) == numbers


def test_gallery_marks_and_images_follow_the_stored_embeddings(reported) -> None:
    """Each answer row lists the top 8 of the reference ranking (grappa_cli.retrieval.metrics.neighbors) of the
    model's stored test embeddings, and marks exactly the images of the query's class."""
    from grappa_cli.pipeline.stages.embed import read_embeddings
    from grappa_cli.reporting.results import load_results
    from grappa_cli.retrieval.metrics import neighbors

    store = reported.store(mode="r")
    sources = {r.model: r.embeddings for r in load_results(reported.results_dir) if r.task == "shapes"}
    page = reported.reports_dir / "index.html"
    text = page.read_text(encoding="utf-8")
    queries = re.findall(r'<div class="query" data-task="shapes" data-query="([^"]*)">(.*?</div>)</div></div>',
                         text)
    assert len(queries) == min(galleries.QUERIES, len(store.read("features/test/shapes/paths")))
    thumbs = {}
    checked = 0
    for query_path, block in queries:
        for model, answer in re.findall(r'<div class="answer" data-model="([^"]*)">(.*?)</div>', block):
            key = sources[model]
            embeddings, rows = read_embeddings(store, key)
            labels = store.read(f"{key}/labels")
            paths = [str(p) for p in store.read(f"{key}/paths")]
            ranked = {}
            for chunk in neighbors(embeddings, labels[rows], depth=galleries.TOP, device="cpu"):
                for q, found in zip(chunk.query_indices, chunk.indices, strict=True):
                    ranked[int(rows[q])] = rows[found]
            query = paths.index(query_path)
            expected = ranked[query][:galleries.TOP]
            marks = [int(m) for m in re.findall(r'data-hit="(\d)"', answer)]
            assert marks == [int(labels[r] == labels[query]) for r in expected], (model, query_path)
            assert len(re.findall("✓", answer)) == sum(marks)
            assert len(re.findall("✗", answer)) == len(marks) - sum(marks)
            srcs = re.findall(r'<img src="([^"]*)"', answer)
            for src, row in zip(srcs, expected, strict=True):  # the same image file each time it appears
                assert thumbs.setdefault(paths[row], src) == src
            checked += 1
    shown = [m for m in sources if m == "backbone" or m.startswith("fused:")]  # single sets are not in galleries
    assert checked == len(queries) * len(shown) and len(shown) == 2


def test_a_rerun_that_changes_nothing_makes_no_thumbnail(reported) -> None:
    from grappa_cli.reporting.page import write_page
    from grappa_cli.reporting.report import ReportOptions, build_table, report
    from grappa_cli.reporting.results import load_results

    assets = reported.reports_dir / "assets"
    before = {p.name: p.stat().st_mtime_ns for p in assets.iterdir()}
    assert any(name.endswith(".jpg") for name in before)
    report(reported, ReportOptions())
    assert {p.name: p.stat().st_mtime_ns for p in assets.iterdir()} == before
    results = load_results(reported.results_dir)
    page = write_page(reported, reported.config(), build_table(results), results, [])
    assert page.thumbnails_made == 0 and page.images > 30


def test_no_html_writes_no_page(evaluated_project, cli) -> None:
    done = cli("-C", evaluated_project.root, "report", "--no-html")
    assert done.exit_code == 0, done.stderr
    assert not (evaluated_project.reports_dir / "index.html").exists()
    assert (evaluated_project.reports_dir / "table2.md").is_file()


def test_sample_queries_spread_over_classes_and_skip_singletons() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])  # class 2 has a single image: never a query
    rows = np.arange(10)
    picked = galleries.sample_queries(labels, rows, count=3, seed=0)
    assert sorted(set(labels[picked])) == [0, 1, 3]  # three queries, three classes
    assert 6 not in galleries.sample_queries(labels, rows, count=9, seed=0)
    assert len(galleries.sample_queries(labels, rows, count=20, seed=0)) == 9
    np.testing.assert_array_equal(galleries.sample_queries(labels, rows, 3, seed=5),
                                  galleries.sample_queries(labels, rows, 3, seed=5))


def test_answer_counts_r_precision_over_the_query_class() -> None:
    embeddings = np.array([[1, 0], [0.9, 0.1], [0.8, 0.3], [0, 1], [0.1, 1]], dtype=np.float32)
    labels = np.array([0, 0, 1, 0, 1])
    rows = np.arange(5)
    got = galleries.answer("m", galleries.normalised(embeddings), rows, labels, np.array(list("abcde")), query=0,
                           top=3)
    # from row 0: row 1 (0.99), row 2 (0.94), then row 4 before row 3; R = 2 other images of class 0
    assert got.paths == ["b", "c", "e"]
    assert got.hits == [True, False, False]
    assert got.r_precision == pytest.approx(0.5)
