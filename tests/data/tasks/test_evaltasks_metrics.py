"""MAP@R, R-Precision and Recall@k: hand examples, the ranking rule, invariances, references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grappa_cli.builtin.metrics import MapAtR, RPrecision
from grappa_cli.errors import DataError, PluginError
from grappa_cli.hookspecs import hookimpl
from grappa_cli.retrieval.metrics import Neighbors, neighbors, retrieval_metrics


def on_circle(degrees: list[float]) -> np.ndarray:
    angles = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def all_neighbors(x, labels, depth=None, chunk_size=1024) -> Neighbors:
    chunks = list(neighbors(x, labels, depth=depth, chunk_size=chunk_size))
    return Neighbors(
        *(
            np.concatenate([getattr(c, f) for c in chunks])
            for f in ("query_indices", "query_labels", "r", "indices", "labels", "scores")
        ),
        max_r=chunks[0].max_r,
    )


def reference_metrics(x, labels, ks=(1,)) -> dict[str, float]:
    """The definitions, written out: float64 cosine, self removed by index, ties by index."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.asarray(labels)
    sims = x @ x.T
    per_query: dict[str, list[float]] = {"map@r": [], "r_precision": [], **{f"recall@{k}": [] for k in ks}}
    for i in range(len(x)):
        r = int((labels == labels[i]).sum()) - 1
        if r == 0:
            continue
        others = np.array([j for j in range(len(x)) if j != i])
        ranked = others[np.lexsort((others, -sims[i, others]))]
        relevant = labels[ranked] == labels[i]
        top = relevant[:r]
        precision = np.cumsum(top) / np.arange(1, r + 1)
        per_query["map@r"].append(float((precision * top).sum() / r))
        per_query["r_precision"].append(float(top.sum() / r))
        for k in ks:
            per_query[f"recall@{k}"].append(float(relevant[:k].any()))
    return {name: float(np.mean(values)) for name, values in per_query.items()}


# -- hand examples -------------------------------------------------------------------------


def test_hand_example_on_the_unit_circle():
    # p0 0deg A, p1 10deg A, p2 100deg A, p3 25deg B, p4 170deg B (cosine ranks by angle gap)
    # p0 (R=2): p1 A, p3 B | p2 A, p4 B   -> AP@R = (1/2)(1/1) = 0.5, RP = 1/2, R@1 = 1, R@2 = 1
    # p1 (R=2): p0 A, p3 B | p2, p4       -> 0.5, 1/2, 1, 1
    # p2 (R=2): p4 B, p3 B | p1, p0       -> 0,   0,   0, 0
    # p3 (R=1): p1 A | p0, p2, p4         -> 0,   0,   0, R@2: p1 A, p0 A -> 0
    # p4 (R=1): p2 A | p3 B, ...          -> 0,   0,   0, R@2: p3 is B -> 1
    x = on_circle([0, 10, 100, 25, 170])
    labels = ["A", "A", "A", "B", "B"]
    result = retrieval_metrics(x, labels, recall_at=(1, 2))
    assert result == {
        "map@r": pytest.approx(1.0 / 5),
        "r_precision": pytest.approx(1.0 / 5),
        "recall@1": pytest.approx(2 / 5),
        "recall@2": pytest.approx(3 / 5),
        "num_queries": 5,
        "num_skipped": 0,
    }


def test_map_at_r_rewards_early_hits_where_r_precision_does_not():
    # query q at 0deg (class A, R=3); ranking: 5deg A, 10deg B, 30deg A, 40deg B, 60deg A
    # first R=3: A B A -> RP = 2/3, AP@R = (1/3)(1/1 + 2/3) = 5/9
    x = on_circle([0, 5, 10, 30, 40, 60])
    labels = np.array([0, 0, 1, 0, 1, 0])
    nb = all_neighbors(x, labels, depth=5)
    q = int(np.flatnonzero(nb.query_indices == 0)[0])
    assert list(nb.indices[q, :5]) == [1, 2, 3, 4, 5]
    assert MapAtR().compute(nb)[q] == pytest.approx(5 / 9)
    assert RPrecision().compute(nb)[q] == pytest.approx(2 / 3)


# -- ranking rule: self by index, ties by index, singletons --------------------------------


def test_ties_are_resolved_by_index():
    # four identical vectors: every neighbour ties; the ranking is by index, self excluded
    x = np.ones((4, 3))
    labels = ["A", "B", "A", "B"]
    nb = all_neighbors(x, labels, depth=3)
    assert nb.indices.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    # R = 1 for everyone; first neighbour has the query's class only for query 2 (-> 0, A)
    assert retrieval_metrics(x, labels)["map@r"] == pytest.approx(0.25)


def test_a_duplicate_of_the_query_stays_in_its_ranking():
    # rows 0 and 1 are identical; the query is removed by index, not by dropping the top hit
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = [0, 0, 1, 1]
    nb = all_neighbors(x, labels, depth=3)
    assert nb.indices[1, 0] == 0 and 1 not in nb.indices[1]
    assert nb.indices[0, 0] == 1 and 0 not in nb.indices[0]
    assert nb.scores[1, 0] == 1.0
    assert retrieval_metrics(x, labels)["map@r"] == 1.0


def test_singleton_queries_are_skipped_but_stay_in_the_gallery():
    x = on_circle([0, 3, 50, 90, 95])
    labels = ["A", "Z", "A", "B", "B"]  # Z has a single image
    result = retrieval_metrics(x, labels)
    assert (result["num_queries"], result["num_skipped"]) == (4, 1)
    nb = all_neighbors(x, labels, depth=4)
    assert 1 not in nb.query_indices
    assert nb.indices[0, 0] == 1  # the singleton is query 0's nearest (wrong) neighbour
    # A queries: 0 -> [1 Z, 2 A] R=1 -> 0; 2 -> [3 B, ...] -> 0; B queries: 3 -> 4, 4 -> 3 -> 1
    assert result["map@r"] == pytest.approx(0.5)


def test_no_query_at_all_is_an_error():
    with pytest.raises(DataError, match=r"none of the 3 images has another image of its class"):
        retrieval_metrics(np.eye(3), [0, 1, 2])


# -- invariances, chunking, references ----------------------------------------------------


def tie_heavy_data(seed: int, n: int = 240, bases: int = 30, dim: int = 6, classes: int = 7):
    """Rows copied from few base vectors with random labels: many exact cross-class ties."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((bases, dim))
    x = base[rng.integers(0, bases, n)]
    labels = rng.integers(0, classes, n)
    labels[:2] = [classes, classes + 1]  # two singletons
    return x, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_and_unchunked_results_are_identical(seed):
    x, labels = tie_heavy_data(seed)
    whole = retrieval_metrics(x, labels, recall_at=(1, 4), chunk_size=len(x))
    for chunk_size in (1, 7, 64):
        assert retrieval_metrics(x, labels, recall_at=(1, 4), chunk_size=chunk_size) == whole
    one = all_neighbors(x, labels, chunk_size=len(x))
    for chunk_size in (1, 13):
        other = all_neighbors(x, labels, chunk_size=chunk_size)
        assert np.array_equal(one.indices, other.indices) and np.array_equal(one.scores, other.scores)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_written_out_definitions_with_ties_and_duplicates(seed):
    x, labels = tie_heavy_data(seed)
    ours = retrieval_metrics(x, labels, recall_at=(1, 3))
    reference = reference_metrics(x, labels, ks=(1, 3))
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_short_candidate_lists_fall_back_to_the_exact_full_ranking():
    # 60 identical rows: faiss's candidates (depth + 1 + 16) all tie with what it left out
    x = np.vstack([np.ones((60, 4)), np.random.default_rng(0).standard_normal((40, 4))])
    labels = np.arange(100) % 9
    deep = all_neighbors(x, labels, depth=99)  # searches everything: no fallback needed
    for depth in (5, 30):
        shallow = all_neighbors(x, labels, depth=depth)
        assert np.array_equal(shallow.indices, deep.indices[:, :depth])
        assert shallow.indices[0].tolist() == list(range(1, depth + 1))


def test_neighbour_order_is_a_full_sort_by_score_then_index():
    # 150 copies of one vector straddle every shallow ranking's boundary (exact fallback)
    rng = np.random.default_rng(7)
    x = np.vstack([np.tile(rng.standard_normal(5), (150, 1)), rng.standard_normal((50, 5))])
    x = x[rng.permutation(200)]
    labels = rng.integers(0, 3, 200)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    for depth in (20, 100):
        nb = all_neighbors(x, labels, depth=depth, chunk_size=64)
        for row, q in enumerate(nb.query_indices):
            others = np.delete(np.arange(200), q)
            expected = others[np.lexsort((others, -sims[q, others]))][:depth]
            assert nb.indices[row].tolist() == expected.tolist()


def test_invariant_to_scaling_and_permutation():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 12))
    labels = rng.integers(0, 12, 300)
    base = retrieval_metrics(x, labels, recall_at=(1, 5))
    assert retrieval_metrics(x * 4.0, labels, recall_at=(1, 5)) == base  # exact in binary
    row_scales = rng.uniform(0.1, 50.0, (300, 1))
    scaled = retrieval_metrics(x * row_scales, labels, recall_at=(1, 5))
    perm = rng.permutation(300)
    permuted = retrieval_metrics(x[perm], labels[perm], recall_at=(1, 5))
    for other in (scaled, permuted):
        assert other.keys() == base.keys()
        for name in base:
            assert other[name] == pytest.approx(base[name], abs=1e-12), name


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    labels = rng.integers(0, 10, 200)
    expected = retrieval_metrics(x, labels)
    assert retrieval_metrics(torch.from_numpy(x), torch.from_numpy(labels)) == expected
    assert retrieval_metrics(torch.from_numpy(x).double(), labels.tolist()) == expected
    half = x.astype(np.float16)
    assert retrieval_metrics(torch.from_numpy(half), labels) == retrieval_metrics(half, labels)
    strings = np.array([f"class {v}" for v in labels])
    assert retrieval_metrics(x, strings) == expected


def min_mixed_gap(x, labels) -> float:
    """Smallest cosine gap between neighbours of different relevance in any top R + 1."""
    unit = np.asarray(x, np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    smallest = np.inf
    for i in range(len(x)):
        r = int((labels == labels[i]).sum()) - 1
        if r == 0:
            continue
        top = np.argsort(-sims[i])[: r + 1]
        relevant = labels[top] == labels[i]
        gaps = sims[i, top[:-1]] - sims[i, top[1:]]
        mixed = relevant[:-1] != relevant[1:]
        if mixed.any():
            smallest = min(smallest, float(gaps[mixed].min()))
    return smallest


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pytorch_metric_learning(seed):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(seed)
    n, dim = 500, 24
    labels = rng.integers(0, 25, n)
    x = rng.standard_normal((n, dim)).astype(np.float32) + 0.3 * rng.standard_normal((25, dim))[labels]
    copies = rng.choice(n, 40, replace=False)  # exact duplicates, within their class
    x[copies[:20]] = x[copies[20:]]
    labels[copies[:20]] = labels[copies[20:]]
    labels[:3] = [100, 101, 102]  # singletons
    # pytorch-metric-learning ranks by float32 L2 distances (rounding ~1e-7): the comparison
    # is exact only where no relevant/irrelevant pair is that close; check these seeds are so.
    assert min_mixed_gap(x, labels) > 2e-6
    ours = retrieval_metrics(x, labels, recall_at=(1,))
    normalised = x / np.linalg.norm(x, axis=1, keepdims=True)
    calculator = AccuracyCalculator(
        include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    theirs = calculator.get_accuracy(torch.from_numpy(normalised), torch.from_numpy(labels))
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["num_queries"] == n - 3


# -- metric plugins and bad input ---------------------------------------------------------


class PrecisionAtK:
    """A third-party metric family: share of relevant items among the first k."""

    name = "precision@k"
    description = "precision at k"

    def at(self, k: int):
        family = self

        class _Metric:
            name = f"precision@{k}"
            description = family.description

            def depth(self, max_r: int) -> int:
                return k

            def compute(self, nb: Neighbors) -> np.ndarray:
                return nb.relevant[:, :k].mean(axis=1)

        return _Metric()


class _Plugin:
    @hookimpl
    def register_metrics(self, register):
        register(PrecisionAtK())


@pytest.fixture
def precision_plugin():
    from grappa_cli.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.register(_Plugin(), name="test-precision-metric")
    yield
    pm.unregister(name="test-precision-metric")


def test_a_plugin_metric_is_computed_on_the_same_ranking(precision_plugin):
    x, labels = tie_heavy_data(5)
    result = retrieval_metrics(x, labels, metrics=["precision@3", "map@r"], recall_at=())
    assert set(result) == {"precision@3", "map@r", "num_queries", "num_skipped"}
    nb = all_neighbors(x, labels, depth=3)
    assert result["precision@3"] == pytest.approx(np.mean(nb.relevant[:, :3].mean(axis=1)), abs=1e-15)
    assert result["map@r"] == retrieval_metrics(x, labels, recall_at=())["map@r"]


def test_unknown_metric_and_bad_inputs():
    x = np.random.default_rng(0).standard_normal((10, 3))
    labels = np.arange(10) % 2
    with pytest.raises(PluginError, match=r"unknown metric 'map@rr' \(did you mean 'map@r'\?\)"):
        retrieval_metrics(x, labels, metrics=["map@rr"])
    with pytest.raises(DataError, match=r"2-D array"):
        retrieval_metrics(x[0], labels[:1])
    with pytest.raises(DataError, match=r"one label per embedding .*shape \(9,\) for 10"):
        retrieval_metrics(x, labels[:9])
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(DataError, match=r"embedding 4 contains NaN"):
        retrieval_metrics(bad, labels)
    with pytest.raises(DataError, match=r"chunk_size must be >= 1"):
        retrieval_metrics(x, labels, chunk_size=0)
    with pytest.raises(DataError, match=r"recall_at: k must be >= 1"):
        retrieval_metrics(x, labels, recall_at=(0,))


def test_a_zero_vector_has_similarity_zero_with_everything():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    nb = all_neighbors(x, [0, 0, 1, 1], depth=3)
    row = int(np.flatnonzero(nb.query_indices == 1)[0])  # query (1, 0)
    assert nb.indices[row].tolist() == [0, 3, 2]  # 0 (zero vector, index 0) ties with 3 (orthogonal)
    assert nb.scores[row].tolist() == [0.0, 0.0, -1.0]
