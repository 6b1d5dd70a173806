"""The blocked, symmetric relevance computation behind MAP@R, R-Precision and Recall@k.

Its relevance pattern must equal, bit for bit, the one of the exact full ranking
(:func:`grappa_cli.retrieval.metrics.neighbors`), whatever the block size, mode, sample or ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grappa_cli.retrieval import relevance
from grappa_cli.retrieval.metrics import _UNIT, Ranking, neighbors, retrieval_metrics
from grappa_cli.retrieval.relevance import float32_error_bound, gram, top_relevance


def exact_relevance(x, labels, depth):
    """bool [queries, depth] from the exact full ranking (score desc, index asc)."""
    chunks = list(neighbors(x, labels, depth=depth))
    return np.concatenate([c.relevant for c in chunks]), np.concatenate([c.query_indices for c in chunks])


def fast_relevance(x, labels, *, block, sample, symmetric, calls=None):
    ranking = Ranking(x, labels)
    depths = np.zeros(ranking.n, dtype=np.int64)
    depths[ranking.queries] = np.maximum(ranking.r[ranking.queries], 1)

    def exact(rows, depth):
        if calls is not None:
            calls.append(len(rows))
        return ranking._rank_exhaustive(rows, depth)[0]

    parts = list(top_relevance(ranking.grid, ranking.labels, depths, eps=float32_error_bound(ranking.dim),
                               unit=_UNIT, exact=exact, block=block, sample=sample, symmetric=symmetric))
    queries = np.concatenate([q for q, _ in parts])
    rel = np.concatenate([r for _, r in parts])
    return rel, queries, depths


def clustered(seed, n=300, dim=16, classes=12, signal=0.6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, dim)) + signal * rng.standard_normal((classes, dim))[labels]
    return x.astype(np.float32), labels


def tie_heavy(seed, n=240, bases=30, dim=6, classes=7):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((bases, dim))[rng.integers(0, bases, n)]
    labels = rng.integers(0, classes, n)
    labels[:2] = [classes, classes + 1]  # two singletons: in the gallery, never queries
    return x, labels


@pytest.mark.parametrize("data", ["clustered", "tie_heavy"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("block", "sample"), [(7, 10_000), (64, 40), (1000, 40)])
def test_relevance_equals_the_exact_full_ranking(data, symmetric, block, sample):
    x, labels = clustered(1) if data == "clustered" else tie_heavy(2)
    ranking = Ranking(x, labels)
    expected, eq = exact_relevance(x, labels, ranking.max_r)
    got, gq, depths = fast_relevance(x, labels, block=block, sample=sample, symmetric=symmetric)
    assert np.array_equal(gq, eq)
    # columns past a query's own depth are False; inside it, the patterns agree exactly
    inside = np.arange(got.shape[1])[None, :] < depths[gq][:, None]
    assert got.shape == expected.shape
    assert np.array_equal(got, expected & inside)


@pytest.mark.parametrize("symmetric", [True, False])
def test_thresholds_above_the_depth_are_redone_from_the_full_rows(monkeypatch, symmetric):
    # thresholds of every other query are pushed above every similarity: those queries get
    # no candidates, are found unsafe, and are redone from their whole float32 rows
    x, labels = tie_heavy(4)
    original = relevance._thresholds

    def too_high(*args):
        thresholds, expected = original(*args)
        thresholds[::2] += np.float32(1.5)
        return thresholds, expected

    redo = relevance._redo_exhaustively
    redone: list[int] = []

    def counting(queries, *args):
        redone.extend(queries.tolist())
        return redo(queries, *args)

    monkeypatch.setattr(relevance, "_thresholds", too_high)
    monkeypatch.setattr(relevance, "_redo_exhaustively", counting)
    calls: list[int] = []
    got, queries, depths = fast_relevance(x, labels, block=32, sample=200, symmetric=symmetric, calls=calls)
    assert sorted(redone) == [q for q in range(0, len(x), 2) if depths[q] > 0]
    assert calls == []  # the last-resort exact ranking is never needed
    expected, _ = exact_relevance(x, labels, int(depths.max()))
    inside = np.arange(got.shape[1])[None, :] < depths[queries][:, None]
    assert np.array_equal(got, expected & inside)


def test_near_ties_across_classes_are_ordered_by_exact_scores(monkeypatch):
    # q = e1; a (relevant) and b (irrelevant) score cos 0.3 rad and cos 0.3 rad + 3e-8:
    # 2 grid units apart, far inside the float32 error bound, so they share a chain.
    angle_a, angle_b = 0.3, float(np.arccos(np.cos(0.3) + 3e-8))
    x = np.zeros((4, 3))
    x[0, 0] = 1.0
    x[1, :2] = [np.cos(angle_a), np.sin(angle_a)]
    x[2, [0, 2]] = [np.cos(angle_b), np.sin(angle_b)]
    x[3] = [-1.0, 0.0, 0.0]
    rescored: list[int] = []
    original = relevance._exact_scores

    def counting(*args):
        rescored.append(len(args[-1]))
        return original(*args)

    monkeypatch.setattr(relevance, "_exact_scores", counting)
    labels = [0, 0, 1, 1]  # q=0 with a=1; b=2 with the far item 3
    ranking = Ranking(x, labels)
    sims = ranking.grid.astype(np.float64) @ ranking.grid[0].astype(np.float64)
    assert sims[2] > sims[1] and sims[2] - sims[1] < float32_error_bound(3) / _UNIT
    result = retrieval_metrics(x, labels)
    assert rescored and sum(rescored) >= 2
    # query 0 (R=1): b first -> 0; query 1 (R=1): q=0 first (cos 0.3 vs cos of a-b angle) -> 1
    # query 2 (R=1): its class mate 3 is the farthest -> 0; query 3: 1, 0, 2 by score -> 0
    assert result["map@r"] == pytest.approx(0.25)
    assert result["recall@1"] == pytest.approx(0.25)


def test_chunked_gram_is_the_product_within_the_bound():
    rng = np.random.default_rng(5)
    for dim in (3, 64, 65, 384):
        a = rng.standard_normal((50, dim))
        b = rng.standard_normal((40, dim))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        ours = gram(torch.from_numpy(a).float(), torch.from_numpy(b).float()).double().numpy()
        exact = a.astype(np.float32).astype(np.float64) @ b.astype(np.float32).astype(np.float64).T
        assert np.abs(ours - exact).max() <= float32_error_bound(dim)
    assert float32_error_bound(384) < (384 + 2) * 2.0**-24 / 4  # chunking tightens the bound


def test_kth_largest_agrees_between_selectors():
    rng = np.random.default_rng(6)
    scores = torch.from_numpy(rng.standard_normal((30, 50)).astype(np.float32))
    k = rng.integers(1, 20, 30)
    by_sort = -np.sort(-scores.numpy(), axis=1)[np.arange(30), k - 1]
    assert np.array_equal(relevance._kth_largest(scores, k, topk=False), by_sort)
    assert np.array_equal(relevance._kth_largest(scores, k, topk=True), by_sort)


def test_recall_deeper_than_r_and_metrics_match_the_old_ranking():
    x, labels = clustered(3, n=200, classes=40)
    fast = retrieval_metrics(x, labels, recall_at=(1, 5, 12))

    class Slow:  # same definitions through the indexed Neighbors path
        def __init__(self, inner):
            self.inner, self.name, self.description = inner, inner.name, ""

        def depth(self, max_r):
            return self.inner.depth(max_r)

        def compute(self, nb):
            return self.inner.compute(nb)

    from grappa_cli.retrieval.metrics import resolve_metrics

    slow = retrieval_metrics(x, labels, recall_at=(),
                             metrics=[Slow(m) for m in resolve_metrics(["map@r", "r_precision", "recall@1",
                                                                         "recall@5", "recall@12"])])
    assert fast == slow


@pytest.mark.parametrize("orientation", ["rows", "columns"])
def test_selection_is_the_same_with_torch_and_numpy(orientation):
    # the torch branch is what runs on a GPU; both must give the same candidates in order
    rng = np.random.default_rng(8)
    scores = torch.from_numpy(rng.standard_normal((37, 53)).astype(np.float32))
    scores[3, 3] = float("nan")  # a query itself never ranks
    if orientation == "rows":
        thresholds = torch.from_numpy(rng.standard_normal((37, 1)).astype(np.float32))
    else:
        thresholds = torch.from_numpy(rng.standard_normal((1, 53)).astype(np.float32))
    hit = torch.empty(scores.shape, dtype=torch.bool)
    by_numpy = relevance._select(scores, thresholds, hit, numpy=True)
    by_torch = relevance._select(scores, thresholds, hit, numpy=False)
    expected = np.argwhere(scores.numpy() >= thresholds.numpy())
    for got in (by_numpy, by_torch):
        assert np.array_equal(np.stack([got[0], got[1]], axis=1), expected)
        assert np.array_equal(got[2], scores.numpy()[expected[:, 0], expected[:, 1]])
