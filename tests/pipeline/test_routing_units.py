"""The routing criteria and the router's fit, on hand-made data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grappa_cli.fusion import routing
from grappa_cli.fusion.route import fit_linear


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _blobs(centers: int, per: int, spread: float, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dim)) * 3
    x = np.concatenate([means[c] + spread * rng.normal(size=(per, dim)) for c in range(centers)])
    return x.astype(np.float32), np.repeat(np.arange(centers), per)


def test_choose_hard_and_soft():
    scores = np.array([[0.1, 0.5, 0.3], [2.0, 2.0, 1.0]])
    np.testing.assert_array_equal(routing.choose(scores, 0), [[0, 1, 0], [1, 0, 0]])  # ties: the first
    soft = routing.choose(scores, 1.0)
    np.testing.assert_allclose(soft.sum(1), 1.0)
    # row 0: range 0.4, so the weights are exp((s - 0.5) / 0.4) normalised
    e = np.exp((scores[0] - 0.5) / 0.4)
    np.testing.assert_allclose(soft[0], e / e.sum())
    assert routing.choose(np.array([[1.0, 1.0]]), 0.5).tolist() == [[0.5, 0.5]]  # no spread: uniform


def test_stability_is_one_for_identical_views_and_low_for_unrelated_ones():
    x = _unit(np.random.default_rng(0).normal(size=(60, 16)))
    assert routing.stability(x, x, k=5) == pytest.approx(1.0)
    y = _unit(np.random.default_rng(1).normal(size=(60, 16)))
    assert routing.stability(x, y, k=5) < 0.25


def test_view_match_counts_rows_that_find_themselves():
    a = np.eye(4, dtype=np.float32)
    b = a[[0, 1, 3, 2]]  # rows 2 and 3 swapped: each finds the other image
    assert routing.view_match(a, b) == 0.5


def test_partition_stability_prefers_the_granularity_the_data_has():
    x, true = _blobs(4, 30, spread=0.3)
    coarse = true // 2  # merges pairs of blobs: k-means with 2 clusters need not find this again
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(true)  # same cluster count, no structure
    assert routing.partition_stability(x, true) > 0.95
    assert routing.partition_stability(x, shuffled) < 0.1
    assert routing.partition_stability(x, true) > routing.partition_stability(x, coarse) - 1e-9
    assert routing.partition_stability(x, np.zeros(len(x))) == 0.0  # one cluster: nothing to find


def test_partition_scores_ignore_rows_the_set_did_not_label():
    x, true = _blobs(3, 20, spread=0.2)
    source_of = np.zeros(len(x), dtype=np.int64)
    labels = true.copy()
    labels[:20] = -1  # a set of added images labels only some rows
    scores = routing.partition_scores(x, [labels], source_of, 1)
    assert scores.shape == (1, 2) and scores[0, 1] == 0.0  # the backbone column
    assert scores[0, 0] > 0.95  # the two labelled blobs are found again; the -1 rows do not count


def test_rankme_counts_directions():
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(200, 1)) @ rng.normal(size=(1, 32))  # one direction
    full = rng.normal(size=(200, 32))
    assert routing.rankme(flat) == pytest.approx(1.0, abs=0.05)
    assert routing.rankme(full) > 25


def test_sample_rows_caps_each_source():
    source_of = np.array([0] * 10 + [1] * 3 + [-1])
    rows = routing.sample_rows(source_of, 4, seed=0)
    assert (np.bincount(source_of[rows]) == [4, 3]).all() and (np.diff(rows) > 0).all()
    assert np.array_equal(rows, routing.sample_rows(source_of, 4, seed=0))


def test_training_sources_follow_data_train(tmp_path):
    from grappa_cli.setup.tasks import add_task
    from tests.conftest import make_image_folder, make_tiny_project

    shapes = make_image_folder(tmp_path / "shapes", n_classes=2, per_class=3)
    other = make_image_folder(tmp_path / "other", n_classes=2, per_class=2, seed=4)
    project = make_tiny_project(tmp_path / "project", shapes)
    add_task(project, "other", other, train=True)
    from grappa_cli.data import sources

    paths = sources.training_set(project.config()).paths
    names, source_of = routing.training_sources(project.config(), [*paths, "/not/listed.png"])
    assert names == ["shapes", "other"]
    expected = [0 if str(p).startswith(str(shapes)) else 1 for p in paths]
    assert source_of.tolist() == [*expected, -1]


def test_fit_linear_separates_sources_and_folds_the_standardisation():
    x, y = _blobs(3, 40, spread=0.5, dim=6, seed=2)
    x = x * 50 + 7  # far from standardised: the fold must undo it
    weight, bias = fit_linear(torch.from_numpy(x), torch.from_numpy(y), 3, l2=1e-3, seed=0)
    predicted = (torch.from_numpy(x) @ weight.t() + bias).argmax(1).numpy()
    assert (predicted == y).mean() == 1.0
