"""Granularity routing: which adaptor set (or none) each training source needs, and a router.

The paper's fused models weigh the N adaptor sets per image with attention trained by a loss
on k-NN pairs. That loss does not see which granularity a domain needs (every pair lies
within one domain, and the loss is nearly the same for uniform and for domain-routed
attention), so Grappa-N ends close to Grappa-avg. The ``route`` strategy decides the
granularity per *training source* instead, without labels, and learns a router that sends
each image to its source's choice:

1. **Sources.** The training set is the union of the parts the user named (``data.train``:
   tasks or folders). Which part an image came from is known without any class label.
2. **Candidates.** The frozen backbone M and each single set M + P_i.
3. **Criterion** (label-free, per source and candidate; ``[fuse] route_criterion``):

   * ``partition`` (the default): k-means run on the source's own backbone features, with as
     many clusters as the set gives the source, finds the set's pseudo-labels again (mean
     adjusted Rand index). A granularity the source's images have is found again; one that
     cuts through them is not. The backbone scores 0.
   * ``silhouette``: the cosine silhouette of the set's pseudo-labels within the source.
   * ``stability``: the mean Jaccard overlap of each image's k nearest neighbours (within its
     source) between two random crops (the same crops for every candidate).
   * ``view-match``: the share of images whose second crop finds its own first crop as the
     nearest among the source's first crops.
   * ``rankme`` and ``uniformity``: the effective rank of the source's embeddings, and Wang and
     Isola's alignment and uniformity over the two crops.

   ``benchmarks/routing_criteria.py`` compares them against held-out labels (validation
   classes): ``rankme`` and ``uniformity`` choose the finest set almost always, the crop
   criteria never the backbone. The choice per source is the candidate with the highest
   score (``temperature`` 0) or a softmax mix over the spread of the scores (``temperature`` > 0).
4. **Router.** Each Grappa layer gets a :class:`~grappa_cli.model.fusion.RouterFusion`: a
   linear classifier over the sources on the layer's token-averaged input, whose source
   probabilities mix the sources' choices. It is fitted by multinomial logistic regression
   on the training images, with every earlier layer already routed as the image's own
   source asks (teacher forcing), so no domain tag is needed at test time: an image of a
   known domain, or near one, is routed like it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from grappa_cli.runtime import Precision

CRITERIA = ("partition", "silhouette", "stability", "view-match", "rankme", "uniformity")
#: Criteria computed from the stored features and pseudo-labels (no forward pass).
LABEL_CRITERIA = ("partition", "silhouette")


@dataclass
class RoutingPlan:
    """What the criterion chose: one row of candidate weights per source.

    ``candidates`` are the set names followed by ``"backbone"``; ``table[s]`` sums to 1.
    """

    sources: list[str]
    candidates: list[str]
    scores: np.ndarray  # [S, N + 1]
    table: np.ndarray  # [S, N + 1]
    images: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"sources": self.sources, "candidates": self.candidates, "images": self.images,
                "scores": np.round(self.scores, 6).tolist(), "table": np.round(self.table, 6).tolist()}


def training_sources(config: Any, paths: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """``(source names, source index per path)``: the part of ``data.train`` each image came from.

    An image listed by two parts belongs to the first (as in the union). A path no part lists
    (it cannot happen for the stored training set) gets -1.
    """
    from grappa_cli.data import sources

    names: list[str] = []
    owner: dict[str, int] = {}
    for name, part in sources.training_parts(config):
        if name not in names:
            names.append(name)
        index = names.index(name)
        for path in part.paths:
            owner.setdefault(str(path), index)
    return names, np.asarray([owner.get(str(p), -1) for p in paths], dtype=np.int64)


def sample_rows(source_of: np.ndarray, per_source: int, seed: int) -> np.ndarray:
    """At most ``per_source`` rows of each source, drawn with ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    picked = []
    for s in np.unique(source_of[source_of >= 0]):
        rows = np.flatnonzero(source_of == s)
        if len(rows) > per_source:
            rows = rng.choice(rows, size=per_source, replace=False)
        picked.append(rows)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def stability(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean Jaccard overlap of the k-NN sets of the same images embedded as ``a`` and as ``b``."""
    k = min(k, len(a) - 1)
    if k < 1:
        return 0.0
    from grappa_cli.fusion.neighbors import knn_graph

    ga, gb = knn_graph(a, k), knn_graph(b, k)
    overlap = [len(set(ra.tolist()) & set(rb.tolist())) for ra, rb in zip(ga, gb, strict=True)]
    inter = np.asarray(overlap, dtype=np.float64)
    return float(np.mean(inter / (2 * k - inter)))


def view_match(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows of ``b`` whose nearest row of ``a`` (cosine) is the same image."""
    if len(a) < 2:
        return 0.0
    sims = b.astype(np.float32) @ a.astype(np.float32).T
    return float(np.mean(np.argmax(sims, axis=1) == np.arange(len(a))))


def rankme(x: np.ndarray) -> float:
    """RankMe (Garrido et al., 2023): the effective rank ``exp(H(sigma / |sigma|_1))`` of the embeddings.

    A label-free predictor of how well a representation transfers: embeddings that spread
    over many directions keep more of what tells unseen classes apart.
    """
    sigma = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    p = sigma / max(sigma.sum(), 1e-12) + 1e-12
    return float(np.exp(-(p * np.log(p)).sum()))


def uniformity_alignment(a: np.ndarray, b: np.ndarray, t: float = 2.0) -> float:
    """``-(alignment + uniformity)`` of Wang and Isola (2020) on two crops of the same images.

    alignment: mean squared distance between an image's two crops; uniformity: the log of the
    mean Gaussian potential ``exp(-t |z_i - z_j|^2)`` between different images. Higher is better.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    align = float(np.mean(np.sum((a - b) ** 2, axis=1)))
    sq = np.maximum(2 - 2 * a @ a.T, 0)
    off = ~np.eye(len(a), dtype=bool)
    uniform = float(np.log(np.mean(np.exp(-t * sq[off])))) if off.any() else 0.0
    return -(align + uniform)


def partition_stability(features: np.ndarray, labels: np.ndarray, *, seeds: int = 3, seed: int = 0) -> float:
    """How reproducible a set's partition of one source is: mean adjusted Rand index between the
    stored pseudo-labels and k-means runs (other seeds) on the source alone with as many clusters.

    A granularity the source's images really have is found again by every run; one that cuts
    through them is not (stability-based choice of k, Ben-Hur et al. 2002).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    labels = np.asarray(labels)
    n = len(np.unique(labels))
    if n < 2 or n >= len(labels):  # one cluster, or one image per cluster: nothing to find again
        return 0.0
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    runs = [KMeans(n_clusters=n, n_init=1, random_state=seed * 100 + r).fit_predict(x) for r in range(seeds)]
    return float(np.mean([adjusted_rand_score(labels, run) for run in runs]))


def silhouette(features: np.ndarray, labels: np.ndarray, *, limit: int = 2000, seed: int = 0) -> float:
    """Cosine silhouette of ``labels`` on ``features`` (0 when fewer than two clusters remain).

    Clusters of one image within the sample count as silhouette 0 (scikit-learn's rule).
    """
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(labels) > limit:
        rows = np.random.default_rng(seed).choice(len(labels), size=limit, replace=False)
        features, labels = features[rows], labels[rows]
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return 0.0
    return float(silhouette_score(features, labels, metric="cosine"))


def choose(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of candidate weights from rows of scores: one-hot argmax (``temperature`` 0) or a softmax.

    The softmax divides each row's scores by ``temperature`` times the row's score range, so
    the setting does not depend on the criterion's units; ties go to the first candidate.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if temperature <= 0:
        table = np.zeros_like(scores)
        table[np.arange(len(scores)), np.argmax(scores, axis=1)] = 1.0
        return table
    spread = np.ptp(scores, axis=1, keepdims=True)
    spread[spread == 0] = 1.0
    z = (scores - scores.max(axis=1, keepdims=True)) / (temperature * spread)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def candidate_models(backbone: Any, adaptor_sets: Sequence[Any]) -> list[Any]:
    """The single sets M + P_i, in order, then the backbone M."""
    from grappa_cli.model.grappa import GrappaModel

    singles = [GrappaModel.with_adaptor_sets(backbone, [s], fusion=None) for s in adaptor_sets]
    return [*singles, GrappaModel.backbone_only(backbone)]


def crop_views(models: Sequence[Any], paths: Sequence[str], data_config: dict[str, Any], *, seed: int,
               batch_size: int, num_workers: int, device: Any, amp: bool | Precision,
               min_side: int | None) -> list[list[np.ndarray]]:
    """Per model, the embeddings of two random crops of every path (the same crops for every model)."""
    from grappa_cli.data.transforms import train_transform
    from grappa_cli.fusion.neighbors import embed_paths

    transform = train_transform(data_config, crop_scale=0.25)
    out = []
    for model in models:
        views = []
        for view in range(2):
            seed_crops(seed * 1000 + view)  # the same crops for every candidate
            views.append(embed_paths(model, list(paths), transform, batch_size=batch_size,
                                     num_workers=num_workers, device=device, amp=amp, min_side=min_side))
        out.append(views)
    return out


def seed_crops(seed: int) -> None:
    """Seed what random crops draw from: torch (flips) and Python's ``random`` (timm's crop boxes)."""
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def embedding_scores(criterion: str, views: Sequence[Sequence[np.ndarray]], source_of: np.ndarray,
                     num_sources: int, k: int = 10) -> np.ndarray:
    """``[S, C]`` scores of a crop criterion (all but ``silhouette``) per source and candidate."""
    scores = np.zeros((num_sources, len(views)))
    for s in range(num_sources):
        rows = np.flatnonzero(source_of == s)
        for c, (a, b) in enumerate(views):
            if criterion == "stability":
                scores[s, c] = stability(a[rows], b[rows], k)
            elif criterion == "view-match":
                scores[s, c] = view_match(a[rows], b[rows])
            elif criterion == "rankme":
                scores[s, c] = rankme(np.concatenate([a[rows], b[rows]]))
            elif criterion == "uniformity":
                scores[s, c] = uniformity_alignment(a[rows], b[rows])
            else:
                raise ValueError(f"unknown crop criterion {criterion!r}")
    return scores


def label_scores(score: Callable[[np.ndarray, np.ndarray], float], features: np.ndarray,
                 labels_per_set: Sequence[np.ndarray], source_of: np.ndarray, num_sources: int) -> np.ndarray:
    """``[S, N + 1]``: ``score(features, pseudo-labels)`` of each set within each source (backbone column 0).

    Only the rows a set's clustering labelled count (a set of added images labels only those;
    the others hold -1).
    """
    x = np.asarray(features, dtype=np.float32)
    scores = np.zeros((num_sources, len(labels_per_set) + 1))
    for s in range(num_sources):
        for i, labels in enumerate(labels_per_set):
            labels = np.asarray(labels)
            rows = np.flatnonzero((source_of == s) & (labels >= 0))
            scores[s, i] = score(x[rows], labels[rows])
    return scores


def partition_scores(features: np.ndarray, labels_per_set: Sequence[np.ndarray], source_of: np.ndarray,
                     num_sources: int, seed: int = 0) -> np.ndarray:
    """``[S, N + 1]`` :func:`partition_stability` of each set within each source."""
    return label_scores(lambda x, y: partition_stability(x, y, seed=seed), features, labels_per_set, source_of,
                        num_sources)


def silhouette_scores(features: np.ndarray, labels_per_set: Sequence[np.ndarray], source_of: np.ndarray,
                      num_sources: int, seed: int = 0) -> np.ndarray:
    """``[S, N + 1]`` :func:`silhouette` of each set's pseudo-labels within each source."""
    return label_scores(lambda x, y: silhouette(x, y, seed=seed), features, labels_per_set, source_of, num_sources)
