"""What the models retrieve, and what each granularity's pseudo-classes look like.

Both read only the store: retrieval lists come from the test embeddings ``grappa eval``
stored (the same vectors its metrics were computed on), cluster samples from the training
features' paths and the stored pseudo-labels. No image is decoded here.

Rankings follow the evaluation protocol (:mod:`grappa_cli.retrieval.metrics`): cosine similarity of
the L2-normalised embeddings, the query removed by index, ties broken by the lower row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from grappa_cli.storage.store import Store

#: queries shown per task, and retrieved images per query
QUERIES = 8
TOP = 8
#: clusters shown per granularity, and images per cluster
CLUSTERS = 4
PER_CLUSTER = 6


@dataclass
class Retrieved:
    """One model's answer to one query."""

    model: str
    paths: list[str]
    hits: list[bool]
    r_precision: float


@dataclass
class QueryRow:
    query: str
    label: str
    #: how many other test images share the query's class (R)
    relevant: int
    answers: list[Retrieved] = field(default_factory=list)


@dataclass
class ClusterSample:
    k: int
    cluster: int
    size: int
    paths: list[str]


def sample_queries(labels: np.ndarray, valid_rows: np.ndarray, count: int = QUERIES, seed: int = 0) -> np.ndarray:
    """``count`` rows drawn with a fixed seed among the valid rows that have another image of their class.

    Classes are drawn first (as many distinct ones as there are queries), then one image of each,
    so that a gallery shows several classes rather than several images of one.
    """
    valid_rows = np.asarray(valid_rows, dtype=np.int64)
    values, counts = np.unique(labels[valid_rows], return_counts=True)
    classes = values[counts > 1]
    if not len(classes):
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pools = {int(c): list(rng.permutation(valid_rows[labels[valid_rows] == c])) for c in rng.permutation(classes)}
    chosen: list[int] = []
    while len(chosen) < count and any(pools.values()):
        for pool in pools.values():  # one image per class per round, classes in a seeded order
            if pool and len(chosen) < count:
                chosen.append(int(pool.pop()))
    return np.sort(np.asarray(chosen[:count], dtype=np.int64))


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity is then a dot product)."""
    x = np.asarray(embeddings, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rank(unit: np.ndarray, rows: np.ndarray, query: int, depth: int) -> np.ndarray:
    """The stored rows of the ``depth`` images most similar to stored row ``query`` (itself excluded).

    ``unit`` holds the L2-normalised embeddings of the valid rows only, in the order of ``rows``.
    """
    position = int(np.flatnonzero(rows == query)[0])
    sims = unit @ unit[position]
    sims[position] = -np.inf
    order = np.lexsort((rows, -sims))  # highest similarity first, ties: lower row first
    order = order[order != position]
    return rows[order[:depth]]


def answer(model: str, unit: np.ndarray, rows: np.ndarray, labels: np.ndarray, paths: np.ndarray,
           query: int, top: int = TOP) -> Retrieved:
    """The top ``top`` of one query (``unit``: L2-normalised embeddings), which of them share its
    class, and the query's R-Precision."""
    relevant = int(np.sum(labels[rows] == labels[query])) - 1
    ranked = rank(unit, rows, query, max(top, relevant))
    hits = labels[ranked] == labels[query]
    r_precision = float(hits[:relevant].mean()) if relevant else 0.0
    return Retrieved(model, [str(paths[r]) for r in ranked[:top]], [bool(h) for h in hits[:top]], r_precision)


def task_gallery(store: Store, sources: dict[str, str], class_names: list[str] | None = None,
                 count: int = QUERIES, top: int = TOP, seed: int = 0) -> list[QueryRow]:
    """Per sampled query, each model's top ``top``; ``sources`` maps model name -> embeddings key.

    Every model's embeddings must list the same images (they are the task's test split); the
    queries are drawn once, from the first model's valid rows.
    """
    from grappa_cli.errors import StoreError
    from grappa_cli.pipeline.stages.embed import read_embeddings

    loaded = {}
    for model, key in sources.items():  # normalised once per model, not once per query
        embeddings, rows = read_embeddings(store, key)
        loaded[model] = (normalised(embeddings), rows)
    first = next(iter(sources.values()))
    labels = store.read(f"{first}/labels")
    paths = store.read(f"{first}/paths")
    for model, key in sources.items():
        if key != first and list(store.read(f"{key}/paths")) != list(paths):
            raise StoreError(f"the embeddings of {model} ({key}) list other images than {first}",
                             hint="rerun `grappa eval --force` for that task")
    common = loaded[next(iter(loaded))][1]
    for _, rows in loaded.values():
        common = np.intersect1d(common, rows)
    out = []
    for query in sample_queries(labels, common, count, seed):
        label = int(labels[query])
        name = class_names[label] if class_names and 0 <= label < len(class_names) else f"class {label}"
        row = QueryRow(str(paths[query]), name, int(np.sum(labels[common] == label)) - 1)
        for model, (embeddings, rows) in loaded.items():
            row.answers.append(answer(model, embeddings, rows, labels, paths, int(query), top))
        out.append(row)
    return out


def cluster_samples(store: Store, cluster_key: str, k: int, clusters: int = CLUSTERS, per_cluster: int = PER_CLUSTER,
                    seed: int = 0) -> list[ClusterSample]:
    """A few pseudo-classes of one granularity with sample members (seeded; clusters of at least 2 images)."""
    labels = store.read(f"{cluster_key}/labels")
    paths = store.read("features/train/paths")
    valid = np.flatnonzero(labels >= 0)
    ids, sizes = np.unique(labels[valid], return_counts=True)
    eligible = ids[sizes >= 2]
    if not len(eligible):
        return []
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(eligible, size=min(clusters, len(eligible)), replace=False))
    out = []
    for cluster in chosen:
        members = valid[labels[valid] == cluster]
        shown = np.sort(rng.choice(members, size=min(per_cluster, len(members)), replace=False))
        out.append(ClusterSample(k, int(cluster), len(members), [str(paths[r]) for r in shown]))
    return out
