"""``reports/index.html``: Table 2, the figures, retrieval galleries, granularities and training curves.

One file plus ``reports/assets/`` (thumbnails, cached attention summaries). It opens from
``file://`` with no network: styles are inline, charts are inline SVG, and there is no script.
Hits and misses are marked by colour *and* by a symbol (✓ / ✗), so they read without colour.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from grappa_cli.reporting import curves as curves_mod
from grappa_cli.reporting import galleries
from grappa_cli.reporting.thumbnails import Thumbnails

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.console import Reporter
    from grappa_cli.project import Project
    from grappa_cli.reporting.results import StoredResult
    from grappa_cli.reporting.table2 import Table2
    from grappa_cli.serving.search import SearchResult
    from grappa_cli.storage.store import Store

PAGE = "index.html"
ASSETS = "assets"
#: training images per group whose mean attention the page shows (a forward pass, cached per model)
ATTENTION_IMAGES = 128

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;
 padding:0 24px 48px;color:#1b1b1b;background:#fff;line-height:1.4}
h1{margin-top:24px}h2{margin-top:40px;border-bottom:1px solid #ddd;padding-bottom:4px}
nav a{margin-right:14px}
table.t2{border-collapse:collapse;font-size:13px}table.t2 td,table.t2 th{padding:3px 7px;border-bottom:1px solid #eee}
table.t2 td.num{text-align:right;font-variant-numeric:tabular-nums}tr.section td{font-style:italic;background:#f6f6f6}
tr.default td{font-weight:600}
.notes{font-size:13px;color:#444}
figure{margin:12px 0}figure img{max-width:100%}
.query{display:flex;align-items:flex-start;gap:10px;margin:14px 0;padding:8px;border:1px solid #eee}
.qinfo{width:130px;font-size:12px}.qinfo img{border:3px solid #333}
.answers{display:flex;flex-direction:column;gap:4px}
.answer{display:flex;align-items:center;gap:4px}.answer .model{width:170px;font-size:12px}
.thumb{position:relative;display:inline-block;width:72px;height:72px}
.thumb img{width:72px;height:72px;object-fit:contain;background:#f3f3f3;box-sizing:border-box}
.hit img{border:3px solid #1a8f3c}.miss img{border:3px solid #c62828}
.mark{position:absolute;top:2px;right:4px;font-weight:700;font-size:14px;text-shadow:0 0 2px #fff}
.hit .mark{color:#1a8f3c}.miss .mark{color:#c62828}
.clusters{display:flex;flex-wrap:wrap;gap:16px}.cluster{border:1px solid #eee;padding:6px}
.cluster img{width:64px;height:64px;object-fit:contain;background:#f3f3f3}
.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart .axis{stroke:#888}svg.chart .series{stroke:#1f5fa8;stroke-width:1.5}svg.chart circle.series{fill:#1f5fa8}
svg.chart text{font-size:10px;fill:#333}svg.chart .chart-title{font-size:12px;font-weight:600}
table.heat{border-collapse:collapse;font-size:12px;margin:6px 0 14px}table.heat td,table.heat th{padding:2px 6px;
 text-align:center}
"""


@dataclass
class PageResult:
    path: Path
    #: ``<img>`` elements on the page, and thumbnails written this time (0 on a rerun that changes nothing)
    images: int = 0
    thumbnails_made: int = 0
    sections: list[str] = field(default_factory=list)


def write_page(project: Project, config: GrappaConfig, table: Table2, results: list[StoredResult], files: list[str],
               *, device: str | None = None, reporter: Reporter | None = None) -> PageResult:
    """Write ``reports/index.html`` (and its assets) from the stored results, embeddings and runs."""
    from grappa_cli.storage.fsutil import atomic_write_text

    out_dir = project.reports_dir
    thumbs = Thumbnails(out_dir / ASSETS)
    store = project.store(mode="r") if project.store_path.exists() else None
    body: list[str] = []
    sections: list[tuple[str, str]] = []

    def section(anchor: str, title: str, content: str) -> None:
        if content:
            sections.append((anchor, title))
            body.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{content}</section>')

    section("table2", "Table 2", table_html(table))
    section("figures", "Figures", figures_html(files))
    if store is not None:
        section("attention", "Attention by task and layer", attention_html(project, results, out_dir, device,
                                                                           reporter))
        section("galleries", "What the models retrieve", galleries_html(store, config, results, thumbs, reporter))
        section("granularities", "What each granularity groups", granularity_html(store, thumbs))
    section("curves", "Training curves", curves_html(project.runs_dir))

    nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in sections)
    title = f"grappa report: {project.root.name}"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{"".join(body)}</body></html>\n')
    path = out_dir / PAGE
    atomic_write_text(path, page)
    return PageResult(path, page.count("<img "), thumbs.made, [a for a, _ in sections])


# -- sections ---------------------------------------------------------------------------------


def table_html(table: Table2) -> str:
    """Table 2 with the numbers of ``table2.md`` (same cells), the default model in bold."""
    from grappa_cli.reporting.results import TABLE_METRICS, default_of
    from grappa_cli.reporting.table2 import METRIC_KEYS, cell

    default = default_of(r.model for r in table.rows if r.model)
    head = "".join(f"<th>{html.escape(table.titles[t])} {html.escape(name)}</th>"
                   for t in table.tasks for _, name in TABLE_METRICS)
    rows = []
    for row in table.rows:
        label = html.escape(row.label.strip())
        if row.kind == "section":
            rows.append(f'<tr class="section"><td colspan="{1 + 2 * len(table.tasks)}">{label}</td></tr>')
            continue
        cells = "".join(f'<td class="num">{html.escape(cell(row, t, m))}</td>'
                        for t in table.tasks for m in METRIC_KEYS)
        mark = ' class="default"' if row.model == default and row.kind == "model" else ""
        suffix = " (default)" if mark else ""
        rows.append(f"<tr{mark}><td>{label}{suffix}</td>{cells}</tr>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (f'<table class="t2"><thead><tr><th>Model</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="notes">RP = R-Precision, mAP = MAP@R, in percent.</p><ul class="notes">{notes}</ul>')


def figures_html(files: list[str]) -> str:
    captions = {"fig4_per_task.png": "Fig. 4: each single adaptor set against k, per task, with the fused models",
                "fig5_examples.png": "Fig. 5: queries where the fused model gains most over the backbone"}
    parts = []
    for name, caption in captions.items():
        if any(Path(f).name == name for f in files):
            parts.append(f'<figure><img src="{name}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "".join(parts)


def galleries_html(store: Store, config: GrappaConfig, results: list[StoredResult], thumbs: Thumbnails,
                   reporter: Reporter | None) -> str:
    """Per task, seeded queries with the top-k of the backbone and of every fused model side by side."""
    from grappa_cli.data import sources
    from grappa_cli.reporting.results import DEFAULT_MODEL_ORDER

    order = ["backbone", *[m for m in DEFAULT_MODEL_ORDER]]
    by_task: dict[str, dict[str, str]] = {}
    for r in results:
        if r.model in order and not r.uses_labels and store.exists(f"{r.embeddings}/labels"):
            by_task.setdefault(r.task, {})[r.model] = r.embeddings
    parts = []
    for task in [t for t in config.tasks if t in by_task] + sorted(set(by_task) - set(config.tasks)):
        models = {m: by_task[task][m] for m in order if m in by_task[task]}
        try:
            classes = sources.test_set(config, task).classes
        except Exception:  # the task's folder moved since evaluation: show class numbers
            classes = None
        rows = galleries.task_gallery(store, models, classes)
        if not rows:
            continue
        parts.append(f'<h3 id="gallery-{html.escape(task)}">{html.escape(task)}</h3>'
                     f'<p class="notes">{len(rows)} queries drawn with a fixed seed; each row: a model\'s top '
                     f'{galleries.TOP} (✓ same class, ✗ other class); RP = the query\'s R-Precision.</p>')
        for row in rows:
            parts.append(_query_html(task, row, thumbs))
    return "".join(parts)


def _query_html(task: str, row: galleries.QueryRow, thumbs: Thumbnails) -> str:
    esc = html.escape
    query = (f'<div class="qinfo"><img src="{esc(thumbs.name(row.query))}" width="96" height="96" '
             f'alt="query of {esc(task)}: {esc(row.label)}, {esc(Path(row.query).name)}"><br>'
             f"<b>{esc(row.label)}</b><br>R = {row.relevant}</div>")
    answers = []
    for ans in row.answers:
        tiles = []
        for rank_, (path, hit) in enumerate(zip(ans.paths, ans.hits, strict=True), start=1):
            kind, mark = ("hit", "✓") if hit else ("miss", "✗")
            tiles.append(f'<span class="thumb {kind}" data-hit="{int(hit)}"><img src="{esc(thumbs.name(path))}" '
                         f'alt="{esc(ans.model)} rank {rank_}, {kind}: {esc(Path(path).name)}">'
                         f'<span class="mark" aria-hidden="true">{mark}</span></span>')
        answers.append(f'<div class="answer" data-model="{esc(ans.model)}"><span class="model">'
                       f"{esc(display_name(ans.model))}"
                       f"<br>RP {100 * ans.r_precision:.0f}%</span>{''.join(tiles)}</div>")
    return (f'<div class="query" data-task="{esc(task)}" data-query="{esc(row.query)}">{query}'
            f'<div class="answers">{"".join(answers)}</div></div>')


def display_name(model: str) -> str:
    """``Grappa-N (fused:neighbor)``, ``M (backbone)``: Table 2's names with the model's own."""
    from grappa_cli.reporting.results import FUSED_NAMES

    if model == "backbone":
        return "M (backbone)"
    return f"{FUSED_NAMES[model]} ({model})" if model in FUSED_NAMES else model


def granularity_html(store: Store, thumbs: Thumbnails) -> str:
    """A few pseudo-classes of each granularity k, with sample training images."""
    from grappa_cli.pipeline.stages.cluster import cluster_key

    ks = sorted(int(name[1:]) for name in store.children("clusters") if name[1:].isdigit()) \
        if store.exists("clusters") else []
    parts = []
    for k in ks:
        key = cluster_key(k)
        record = store.provenance(key) or {}
        if not record.get("complete") or not store.exists(f"{key}/labels"):
            continue
        samples = galleries.cluster_samples(store, key, k)
        if not samples:
            continue
        blocks = []
        for sample in samples:
            imgs = "".join(f'<img src="{html.escape(thumbs.name(p))}" '
                           f'alt="k={k} pseudo-class {sample.cluster}: {html.escape(Path(p).name)}">'
                           for p in sample.paths)
            blocks.append(f'<div class="cluster"><div class="notes">pseudo-class {sample.cluster} '
                          f"({sample.size} images)</div>{imgs}</div>")
        parts.append(f'<h3>k = {k}</h3><div class="clusters">{"".join(blocks)}</div>')
    if parts:
        parts.insert(0, '<p class="notes">Coarse k groups images by domain or category, fine k by instance or '
                        'look (the paper\'s Fig. 1). Clusters and images are drawn with a fixed seed.</p>')
    return "".join(parts)


def curves_html(runs_dir: Path) -> str:
    runs = curves_mod.read_runs(runs_dir) if runs_dir.is_dir() else []
    charts = []
    for run in runs:
        if run.loss:
            charts.append(curves_mod.svg_line_chart(
                [(float(s), v) for s, v in run.loss], title=f"{run.run}: loss", x_label="step", y_label="loss"))
        if run.entropy:
            charts.append(curves_mod.svg_line_chart(
                [(float(e), v) for e, v in run.entropy], title=f"{run.run}: attention entropy", x_label="epoch",
                y_label="entropy", y_range=(0.0, 1.0)))
    if not charts:
        return ""
    return ('<p class="notes">Loss per logged step of each run (runs/*/metrics.jsonl; TensorBoard reads the same '
            'scalars from the event files there). Attention entropy: 1 = uniform over the sets.</p>'
            f'<div class="charts">{"".join(charts)}</div>')


def attention_html(project: Project, results: list[StoredResult], out_dir: Path, device: str | None,
                   reporter: Reporter | None) -> str:
    """Mean attention alpha per layer and set, for each fused model with attention, per task (heat tables)."""
    from grappa_cli.pipeline.stages import models as models_mod

    strategies = sorted({r.model.partition(":")[2] for r in results if r.model.startswith("fused:")})
    parts = []
    for strategy in strategies:
        summary = _attention_summary(project, strategy, out_dir, device, reporter, models_mod)
        if not summary or not summary.get("groups"):
            continue
        sets = summary["sets"]
        tables = []
        for group, values in summary["groups"].items():
            head = "".join(f"<th>{html.escape(s)}</th>" for s in sets)
            rows = "".join(
                f"<tr><th>layer {i + 1}</th>" + "".join(_heat_cell(v) for v in layer) + "</tr>"
                for i, layer in enumerate(values["per_layer"]))
            tables.append(f'<div><div class="notes">{html.escape(group)} ({values["images"]} images)</div>'
                          f'<table class="heat"><tr><th></th>{head}</tr>{rows}</table></div>')
        parts.append(f"<h3>fused:{html.escape(strategy)}</h3><div class=\"charts\">{''.join(tables)}</div>")
    if parts:
        parts.insert(0, f'<p class="notes">Mean attention weight of each adaptor set, per layer, over up to '
                        f'{ATTENTION_IMAGES} images of each group (darker = more weight).</p>')
    return "".join(parts)


def _heat_cell(value: float) -> str:
    shade = int(255 - 200 * max(0.0, min(1.0, value)))
    ink = "#fff" if shade < 130 else "#000"
    return f'<td style="background:rgb({shade},{shade},255);color:{ink}">{value:.2f}</td>'


def _attention_summary(project: Project, strategy: str, out_dir: Path, device: str | None, reporter: Reporter | None,
                       models_mod: ModuleType) -> dict[str, Any] | None:
    """``inspect_attention`` of a fused model, cached in ``assets/`` under the model's weights digest."""
    from grappa_cli.pipeline.stages.fuse import inspect_attention
    from grappa_cli.storage.fsutil import atomic_write_text

    ref = models_mod.parse(f"fused:{strategy}")
    digest = models_mod.weights_digest(project, ref)
    if digest is None:
        return None
    cache = out_dir / ASSETS / f"attention-{strategy}-{digest}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    try:
        if reporter is not None:
            with reporter.task(f"attention of fused:{strategy} per task", total=None):
                summary = inspect_attention(project, strategy, limit=ATTENTION_IMAGES, device=device)
        else:
            summary = inspect_attention(project, strategy, limit=ATTENTION_IMAGES, device=device)
    except Exception as exc:  # a model without attention layers (or an unreadable one): no heat table
        if reporter is not None:
            reporter.log(f"attention of fused:{strategy} not shown: {html.escape(str(exc))}")
        return None
    cache.parent.mkdir(parents=True, exist_ok=True)
    for old in cache.parent.glob(f"attention-{strategy}-*.json"):
        old.unlink(missing_ok=True)
    atomic_write_text(cache, json.dumps(summary))
    return summary


def write_search_page(result: SearchResult, output: Path) -> PageResult:
    """``grappa search ... --html out.html``: each query with its top-k (thumbnails and scores).

    Thumbnails go to ``<out>_files/`` next to the page (as a browser saves a page), so the file
    and that folder can be moved together.
    """
    from grappa_cli.storage.fsutil import atomic_write_text

    output = Path(output)
    thumbs = Thumbnails(output.with_name(f"{output.stem}_files"))
    esc = html.escape
    blocks = []
    for query in result.results:
        tiles = "".join(
            f'<span class="thumb"><img src="{esc(thumbs.name(m.path))}" alt="rank {m.rank}: {esc(Path(m.path).name)} '
            f'(score {m.score:.3f})"></span><span class="notes">{m.rank}. {m.score:.3f}</span>'
            for m in query.matches)
        blocks.append(f'<div class="query" data-query="{esc(query.query)}"><div class="qinfo">'
                      f'<img src="{esc(thumbs.name(query.query))}" width="96" height="96" '
                      f'alt="query: {esc(Path(query.query).name)}"><br><b>{esc(Path(query.query).name)}</b></div>'
                      f'<div class="answer">{tiles}</div></div>')
    title = f"grappa search: {result.model}, index {result.name!r}"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>"
            f'<p class="notes">Top {result.k} by cosine similarity ({esc(str(result.index.get("kind", "")))} '
            f'index).</p>{"".join(blocks)}</body></html>\n')
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, page)
    return PageResult(output, page.count("<img "), thumbs.made, ["search"])
