"""Which label-free criterion picks the granularity a domain needs? Checked against held-out labels.

For every project of the quality harness (``benchmarks/quality.py``; by default those of
``--split val``, whose evaluated classes are validation classes carved from the training
classes), this script computes each routing criterion of :mod:`grappa_cli.fusion.routing`
per training source and candidate (the single adaptor sets and the backbone), and compares
the candidate each criterion chooses with the evaluated R-Precision of every candidate on the
tasks of that source. Each task of the harness is one domain, and retrieval stays within a
task, so a model that routes each source's images to one candidate scores exactly that
candidate's R-Precision on the source's tasks: the script reports, per criterion, the RP such
a routing would reach, next to the backbone, Grappa-avg and the oracle (the best single set
per task, chosen with the evaluation labels).

    PYTHONPATH=src python benchmarks/routing_criteria.py --work /tmp/grappa-quality --split val

A test task is attributed to the training source whose images its test images resemble most
(the majority vote of each test image's 10 nearest training images in the backbone's stored
features): this is how the router sees it too, with no task tag.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def null_stability(features: np.ndarray, clusters: int, *, seeds: int = 3, seed: int = 0) -> float:
    """How reproducible k-means with ``clusters`` clusters is on the same features without their
    structure: each feature column permuted on its own (the gap statistic's reference). Few
    clusters are reproducible on any data (k-means splits a blob along its widest axes the same
    way every time); this is the part of a partition's stability that says nothing about the data.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x = np.asarray(features, dtype=np.float32)
    if clusters < 2 or clusters >= len(x):
        return 0.0
    rng = np.random.default_rng(seed)
    null = np.stack([rng.permutation(column) for column in x.T], axis=1)
    null = null / np.maximum(np.linalg.norm(null, axis=1, keepdims=True), 1e-12)
    runs = [KMeans(n_clusters=clusters, n_init=1, random_state=seed * 100 + 50 + r).fit_predict(null)
            for r in range(seeds)]
    return float(np.mean([adjusted_rand_score(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]]))


def partition_gap_scores(features: np.ndarray, labels_per_set: Sequence[np.ndarray], source_of: np.ndarray,
                         num_sources: int, seed: int = 0) -> np.ndarray:
    """``[S, N + 1]`` partition stability minus :func:`null_stability` at the same cluster count
    (tried on 2026-12-06, not a configuration choice: the experiments log)."""
    from grappa_cli.fusion import routing

    def gap(x: np.ndarray, labels: np.ndarray) -> float:
        return (routing.partition_stability(x, labels, seed=seed)
                - null_stability(x, len(np.unique(labels)), seed=seed))

    return routing.label_scores(gap, features, labels_per_set, source_of, num_sources)


def barlow_loss(za: Any, zb: Any, off_weight: float = 0.0051) -> tuple[Any, Any, Any]:
    """Barlow Twins loss of two batches (each feature standardised over the batch), and its parts."""
    import torch

    n = za.shape[0]
    za = (za - za.mean(0)) / (za.std(0) + 1e-6)
    zb = (zb - zb.mean(0)) / (zb.std(0) + 1e-6)
    c = za.T @ zb / n
    on = ((torch.diagonal(c) - 1) ** 2).sum()
    off = (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()
    return on + off_weight * off, on, off


def own_graph_loss(a: np.ndarray, b: np.ndarray, *, seed: int, repeats: int = 3, steps: int = 300,
                   dims: tuple[int, int] = (256, 64)) -> float:
    """Held-out Barlow Twins loss on a candidate's own nearest-neighbour pairs, projector refitted.

    Each image is paired with its nearest other image in the candidate's embedding of the first
    crops (``a``), the pair being (its first crop, the neighbour's second crop ``b``), as
    Grappa-N pairs images. A fresh projector is fitted with Adam on half of the images and the
    loss is read on the other half (a projector fitted and read on the same few hundred pairs
    drives the loss towards zero on any embedding); mean over ``repeats`` splits. Lower is
    better. (Tried on 2026-12-06 as a routing criterion, not a configuration choice: the
    experiments log.)
    """
    import torch

    x = np.asarray(a, dtype=np.float32)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -2.0)
    partner = torch.from_numpy(similarity.argmax(1))
    first, second = torch.from_numpy(x), torch.from_numpy(np.asarray(b, dtype=np.float32))
    rng = np.random.default_rng(seed)
    losses = []
    for r in range(repeats):
        order = torch.from_numpy(rng.permutation(len(x)))
        fit, held = order[: len(x) // 2], order[len(x) // 2:]
        torch.manual_seed(seed * 100 + r)
        projector = torch.nn.Sequential(torch.nn.Linear(x.shape[1], dims[0]), torch.nn.BatchNorm1d(dims[0]),
                                        torch.nn.ReLU(), torch.nn.Linear(dims[0], dims[1]))
        optimizer = torch.optim.Adam(projector.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(steps):
            loss = barlow_loss(projector(first[fit]), projector(second[partner[fit]]))[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses.append(float(barlow_loss(projector(first[held]), projector(second[partner[held]]))[0]))
    return float(np.mean(losses))


def own_graph_scores(views: Sequence[Sequence[np.ndarray]], source_of: np.ndarray, num_sources: int,
                     seed: int = 0) -> np.ndarray:
    """``[S, C]``: minus :func:`own_graph_loss` of each candidate on each source's crops."""
    scores = np.zeros((num_sources, len(views)))
    for s in range(num_sources):
        rows = np.flatnonzero(source_of == s)
        for c, (a, b) in enumerate(views):
            scores[s, c] = -own_graph_loss(a[rows], b[rows], seed=seed)
    return scores


def task_sources(store: Any, train_x: np.ndarray, source_of: np.ndarray, tasks: list[str]) -> dict[str, int]:
    """The training source each task's test images resemble most (10-NN vote in backbone space)."""
    import faiss

    x = np.ascontiguousarray(train_x, dtype=np.float32)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    out = {}
    for task in tasks:
        q = np.ascontiguousarray(store.read(f"features/test/{task}/embeddings").astype(np.float32))
        faiss.normalize_L2(q)
        _, found = index.search(q, 10)
        votes = np.bincount(source_of[found.ravel()], minlength=int(source_of.max()) + 1)
        out[task] = int(np.argmax(votes))
    return out


def study_project(root: Path, per_source: int, seed: int, crops: bool = True,
                  own_graph: bool = False) -> dict[str, Any]:
    import torch

    from grappa_cli.data.images import decode_min_side
    from grappa_cli.fusion import routing
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.model.checkpoint import load_adaptor_set
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.pipeline.stages.fuse import stored_sets
    from grappa_cli.project import Project
    from grappa_cli.records import artifacts
    from grappa_cli.reporting.results import adaptor_k, load_results

    project = Project(root)
    config = project.config()
    store = project.store(mode="r")
    valid = store.read("features/train/valid")
    paths = np.asarray(store.read("features/train/paths"))[valid]
    train_x = store.read("features/train/embeddings").astype(np.float32)[valid]
    names, source_of = routing.training_sources(config, [str(p) for p in paths])
    sets = stored_sets(project)
    backbone = build_backbone(backbone_spec(config))
    adaptor_sets = [load_adaptor_set(artifacts.checkpoint_path(project, f"adaptors/{n}"), backbone) for n in sets]
    candidates = [*sets, "backbone"]

    scores = {}
    if crops:
        rows = routing.sample_rows(source_of, per_source, seed)
        models = routing.candidate_models(backbone, adaptor_sets)
        views = routing.crop_views(models, [str(p) for p in paths[rows]], backbone.data_config, seed=seed,
                                   batch_size=64, num_workers=0, device=torch.device("cpu"), amp=False,
                                   min_side=decode_min_side(backbone.data_config))
        scores = {c: routing.embedding_scores(c, views, source_of[rows], len(names))
                  for c in routing.CRITERIA if c not in routing.LABEL_CRITERIA}
        if own_graph:
            scores["own-graph"] = own_graph_scores(views, source_of[rows], len(names), seed=seed)
    from grappa_cli.pipeline.stages.adapt import training_labels

    labels = [training_labels(store, n)[0][valid] for n in sets]
    scores["silhouette"] = routing.silhouette_scores(train_x, labels, source_of, len(names), seed=seed)
    scores["partition"] = routing.partition_scores(train_x, labels, source_of, len(names), seed=seed)
    scores["partition-gap"] = partition_gap_scores(train_x, labels, source_of, len(names), seed=seed)

    results = load_results(project.results_dir)
    rp: dict[str, dict[str, float]] = {}
    for r in results:
        k = adaptor_k(r.model)
        name = f"k{k}" if k is not None else r.model
        rp.setdefault(r.task, {})[name] = 100 * r.metrics["r_precision"]
    tasks = sorted(rp)
    owner = task_sources(store, train_x, source_of, tasks)
    return {"root": str(root), "sources": names, "candidates": candidates,
            "scores": {c: s.tolist() for c, s in scores.items()}, "rp": rp, "task_source": owner}


def mix_rp(root: Path, rows: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """RP of fixed mixes: ``rows[task][label]`` = weights over the candidates (sets, then the backbone).

    Each task is evaluated with a model whose every layer applies that task's weights (a
    router of one source), on the task's stored test images and labels: what Grappa-R reaches
    on a task when it routes the task's images as its source's row says.
    """
    import torch

    from grappa_cli.data.images import decode_min_side
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.fusion.neighbors import embed_paths
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.model.checkpoint import load_adaptor_set
    from grappa_cli.model.grappa import GrappaModel
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.pipeline.stages.fuse import stored_sets
    from grappa_cli.project import Project
    from grappa_cli.records import artifacts
    from grappa_cli.retrieval.metrics import retrieval_metrics

    project = Project(root)
    config = project.config()
    store = project.store(mode="r")
    backbone = build_backbone(backbone_spec(config))
    sets = [load_adaptor_set(artifacts.checkpoint_path(project, f"adaptors/{n}"), backbone)
            for n in stored_sets(project)]
    model = GrappaModel.with_adaptor_sets(backbone, sets, fusion="router").eval()
    transform = eval_transform(backbone.data_config)
    out: dict[str, dict[str, float]] = {}
    for task, mixes in rows.items():
        valid = store.read(f"features/test/{task}/valid")
        paths = [str(p) for p in np.asarray(store.read(f"features/test/{task}/paths"))[valid]]
        labels = np.asarray(store.read(f"features/test/{task}/labels"))[valid]
        for label, weights in mixes.items():
            for layer in model.fusion_layers():
                layer.set_table(torch.tensor([weights], dtype=torch.float32))
            z = embed_paths(model, paths, transform, batch_size=64, num_workers=0, device=torch.device("cpu"),
                            amp=False, min_side=decode_min_side(backbone.data_config))
            out.setdefault(task, {})[label] = 100 * float(retrieval_metrics(z, labels)["r_precision"])
    return out


def mix_study(studies: list[dict[str, Any]], temperatures: list[float]) -> str:
    """RP of soft routings (each criterion at each temperature) and of hedged ones, per project."""
    from grappa_cli.fusion import routing

    lines = ["\nSoft routings: RP mean over the tasks (per project, mean)"]
    per_rule: dict[str, list[float]] = {}
    for study in studies:
        owner = study["task_source"]
        rows: dict[str, dict[str, list[float]]] = {}
        for c, scores in study["scores"].items():
            for t in temperatures:
                table = routing.choose(np.asarray(scores), t)
                for task in study["rp"]:
                    rows.setdefault(task, {})[f"{c}@{t:g}"] = table[owner[task]].tolist()
        n = len(study["candidates"])
        for task in study["rp"]:
            rows[task]["uniform+M"] = [1 / n] * n
        rp = mix_rp(Path(study["root"]), rows)
        for label in next(iter(rp.values())):
            per_rule.setdefault(label, []).append(statistics.fmean(rp[task][label] for task in rp))
        study["mix_rp"] = rp
    for rule, values in per_rule.items():
        lines.append(_rule_line(rule, values, 18))
    return "\n".join(lines)


def _rule_line(rule: str, values: list[float], width: int) -> str:
    cells = " ".join(f"{v:6.2f}" for v in values)
    return f"  {rule:{width}s} {cells}   mean {statistics.fmean(values):.2f}"


def summarise(studies: list[dict[str, Any]]) -> str:
    from grappa_cli.fusion import routing

    lines = []
    criteria = list(studies[0]["scores"])
    per_rule: dict[str, list[float]] = {}
    for study in studies:
        cands, rp, owner = study["candidates"], study["rp"], study["task_source"]
        lines.append(f"\n{study['root']}")
        lines.append("  source scores (" + ", ".join(cands) + ")")
        for c in criteria:
            for s, name in enumerate(study["sources"]):
                vals = " ".join(f"{v:.3f}" for v in study["scores"][c][s])
                lines.append(f"    {c:11s} {name:14s} {vals}")
        lines.append("  task RP per candidate (best marked *)")
        for task in sorted(rp):
            row = [rp[task].get(c, float("nan")) for c in cands]
            best = int(np.nanargmax(row))
            cells = " ".join(f"{v:5.1f}{'*' if i == best else ' '}" for i, v in enumerate(row))
            lines.append(f"    {task:14s} ({study['sources'][owner[task]]}) {cells}")
        rules = {c: routing.choose(np.asarray(study["scores"][c]), 0.0) for c in criteria}
        for rule, table in rules.items():
            values = [rp[t].get(cands[int(np.argmax(table[owner[t]]))], float("nan")) for t in sorted(rp)]
            per_rule.setdefault(rule, []).append(statistics.fmean(values))
        for ref in ("backbone", "fused:avg", "fused:neighbor"):
            if all(ref in rp[t] for t in rp):
                per_rule.setdefault(ref, []).append(statistics.fmean(rp[t][ref] for t in rp))
        per_rule.setdefault("oracle", []).append(
            statistics.fmean(max(rp[t].get(c, -1) for c in cands[:-1]) for t in rp))
        per_rule.setdefault("oracle+M", []).append(statistics.fmean(max(rp[t].get(c, -1) for c in cands) for t in rp))
    lines.append("\nRP mean over the tasks, routing each source to the chosen candidate (per project, mean):")
    for rule, values in per_rule.items():
        lines.append(_rule_line(rule, values, 15))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/grappa-quality")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--per-source", type=int, default=400, help="training images per source the crops are made of")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-crops", action="store_true", help="only the criteria of the stored features and "
                        "pseudo-labels (no forward pass)")
    parser.add_argument("--own-graph", action="store_true", help="also the own-graph Barlow Twins loss with "
                        "a refitted projector (a minute or two per project on 2 cores)")
    parser.add_argument("--project", action="append", default=[], help="study these project directories instead")
    parser.add_argument("--json", default="")
    parser.add_argument("--from-json", default="", help="summarise a previous --json instead of computing")
    parser.add_argument("--temperatures", default="", help="also evaluate soft routings at these temperatures "
                        "(comma list; each a model evaluated per task)")
    args = parser.parse_args(argv)
    if args.from_json:
        studies = json.loads(Path(args.from_json).read_text())
    else:
        roots = [Path(p) for p in args.project] or sorted(
            p for p in Path(args.work).glob(f"run-{args.split}-*") if (p / "results").is_dir())
        studies = [study_project(root, args.per_source, args.seed, not args.no_crops, args.own_graph)
                   for root in roots]
    print(summarise(studies))
    if args.temperatures:
        print(mix_study(studies, [float(t) for t in args.temperatures.split(",")]))
    if args.json:
        Path(args.json).write_text(json.dumps(studies, indent=1))


if __name__ == "__main__":
    main()
