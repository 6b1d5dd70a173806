"""The built-in k-means backends on real data: recovery, exact labels and inertia, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from cluster_data import planted_blobs

from grappa_cli import plugins
from grappa_cli.clustering.assign import inertia, mean_centroids, nearest
from grappa_cli.clustering.base import Clusterer, ClusterResult, settings_of
from grappa_cli.clustering.faiss_kmeans import FaissKMeans
from grappa_cli.clustering.seeding import greedy_trials, kmeanspp
from grappa_cli.clustering.sklearn_kmeans import SklearnKMeans, SklearnMiniBatchKMeans
from grappa_cli.clustering.vectors import check_finite, l2_normalize
from grappa_cli.errors import DataError

BACKENDS = ["faiss", "sklearn", "minibatch"]


def squared_distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Reference: all squared distances in float64, the textbook way."""
    diff = x[:, None, :].astype(np.float64) - c[None, :, :].astype(np.float64)
    return (diff**2).sum(axis=2)


def assert_valid_partition(x: np.ndarray, result: ClusterResult, k: int) -> None:
    assert result.centroids.shape == (k, x.shape[1])
    assert result.centroids.dtype == np.float32
    assert result.labels.shape == (x.shape[0],)
    assert result.labels.min() >= 0 and result.labels.max() < k
    d2 = squared_distances(x, result.centroids)
    # labels are the argmin distance (ties allowed: the chosen one is as close as the closest)
    chosen = d2[np.arange(x.shape[0]), result.labels]
    np.testing.assert_allclose(chosen, d2.min(axis=1), rtol=1e-5, atol=1e-6)
    # inertia is the sum of squared distances to the assigned centroid
    assert result.inertia == pytest.approx(chosen.sum(), rel=1e-9)
    assert result.iterations >= 1
    assert result.sizes().sum() == x.shape[0]


def recovered(labels: np.ndarray, truth: np.ndarray) -> bool:
    """True when found clusters and planted blobs match one to one."""
    pairs = set(zip(labels.tolist(), truth.tolist(), strict=True))
    return len(pairs) == len(set(truth.tolist())) == len(set(labels.tolist()))


def test_builtin_backends_are_registered_with_descriptions():
    registry = plugins.registry("clusterers")
    assert set(BACKENDS) <= set(registry.names())
    for name in BACKENDS:
        backend = registry.get(name)
        assert isinstance(backend, Clusterer)
        assert registry.owners[name] == "grappa_cli.builtin.clusterers"
        assert backend.description == backend.impl.description  # the lazy wrapper says what the class says
        assert settings_of(backend)["init"].endswith("k-means++")


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_recover_planted_blobs(name):
    """Plain k-means++ can still seed two centres in one blob (~2% of draws here): allow one miss in 10."""
    misses = 0
    for seed in range(10):
        x, truth = planted_blobs(seed=seed)
        result = plugins.get("clusterers", name).fit(x, 8, seed=seed, niter=20)
        assert_valid_partition(x, result, 8)
        if recovered(result.labels, truth):
            # each centroid sits at the mean of its blob: inertia ~ n * dim * spread^2
            assert result.inertia == pytest.approx(400 * 16 * 0.01**2, rel=0.15)
        else:
            misses += 1
    assert misses <= 1


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_on_unstructured_data_give_exact_labels_and_inertia(name):
    rng = np.random.default_rng(5)
    x = l2_normalize(rng.standard_normal((600, 12)).astype(np.float32))
    result = plugins.get("clusterers", name).fit(x, 37, seed=3, niter=6)
    assert_valid_partition(x, result, 37)


@pytest.mark.parametrize("name", BACKENDS)
def test_same_seed_same_result_other_seed_other_result(name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    backend = plugins.get("clusterers", name)
    a = backend.fit(x, 20, seed=11, niter=5)
    b = backend.fit(x, 20, seed=11, niter=5)
    c = backend.fit(x, 20, seed=12, niter=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia
    assert not np.array_equal(a.centroids, c.centroids)


def test_faiss_backend_equals_a_single_faiss_training_call():
    """Driving faiss one iteration at a time (for progress) is faiss's own loop, stop rule included.

    Checked with faiss's own k-means++ seeding (``init="k-means++"``), so both start alike.
    """
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    for k, niter in ((64, 50), (1000, 25), (64, 4)):
        ours = FaissKMeans(init="k-means++").fit(x, k, seed=4, niter=niter)
        cp = faiss.ClusteringParameters()
        cp.niter = niter
        cp.seed = 4
        cp.init_method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
        cp.max_points_per_centroid = 1 << 20
        cp.min_points_per_centroid = 1
        clus = faiss.Clustering(16, k, cp)
        clus.train(x, faiss.IndexFlatL2(16))
        reference = faiss.vector_to_array(clus.centroids).reshape(k, 16)
        np.testing.assert_array_equal(ours.centroids, reference)
        assert ours.iterations == clus.iteration_stats.size()
        assert ours.info["objectives"] == [clus.iteration_stats.at(i).obj for i in range(ours.iterations)]


def test_faiss_uses_all_points_and_records_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 4)).astype(np.float32)
    # faiss's default would subsample 256 * k = 2560 of the 3000 points for k = 10
    result = FaissKMeans().fit(x, 10, seed=0, niter=3)
    assert result.info["max_points_per_centroid"] == 300
    assert result.info["max_points_per_centroid"] * 10 >= 3000
    assert result.info["subsampled"] is False
    assert result.info["min_points_per_centroid"] == 1
    assert result.info["device"] == "cpu"


@pytest.mark.timeout(60)
def test_faiss_with_k_half_of_n_finishes_without_stalling():
    rng = np.random.default_rng(1)
    x = l2_normalize(rng.standard_normal((2000, 32)).astype(np.float32))
    result = FaissKMeans().fit(x, 1000, seed=0, niter=25)
    assert_valid_partition(x, result, 1000)
    assert (result.sizes() == 0).sum() <= 10  # faiss repairs empty clusters during the iterations


@pytest.mark.timeout(60)
def test_faiss_with_more_clusters_than_distinct_points_stays_bounded():
    rng = np.random.default_rng(2)
    x = np.repeat(rng.standard_normal((100, 8)).astype(np.float32), 10, axis=0)
    result = FaissKMeans().fit(x, 300, seed=0, niter=10)
    assert result.iterations == 10  # keeps splitting empty clusters, within niter
    assert (result.sizes() > 0).sum() == 100  # only 100 distinct points can be owned
    scatter = float(((x - x.mean(axis=0)) ** 2).sum())
    assert result.inertia < 1e-5 * scatter  # split copies sit a hair away from their point


def test_faiss_continues_from_the_greedy_seeds():
    """With grappa's seeding, the backend is faiss's loop started from those seeds."""
    import faiss

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    ours = FaissKMeans().fit(x, 50, seed=2, niter=30)
    seeds = kmeanspp(x, 50, seed=2, trials=greedy_trials(50))
    cp = faiss.ClusteringParameters()
    cp.niter = 30
    cp.seed = 2
    cp.max_points_per_centroid = 1 << 20
    cp.min_points_per_centroid = 1
    clus = faiss.Clustering(8, 50, cp)
    faiss.copy_array_to_vector(seeds.ravel(), clus.centroids)
    clus.train(x, faiss.IndexFlatL2(8))
    np.testing.assert_array_equal(ours.centroids, faiss.vector_to_array(clus.centroids).reshape(50, 8))
    assert ours.info["init"].startswith("greedy-k-means++")


@pytest.mark.parametrize("trials", [1, 4])
def test_kmeanspp_picks_one_data_point_per_blob(trials):
    x, truth = planted_blobs(seed=3)
    centres = kmeanspp(x, 8, seed=0, trials=trials)
    rows = {tuple(r) for r in x.tolist()}
    assert all(tuple(c) in rows for c in centres.tolist())
    # D² sampling with blobs 140 noise-std apart: one seed in each blob
    assert len(set(truth[nearest(centres, x)].tolist())) == 8


def test_greedy_seeding_lowers_the_potential():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)

    def potential(centres):
        return inertia(x, centres, nearest(x, centres))

    plain = np.mean([potential(kmeanspp(x, 60, seed=s, trials=1)) for s in range(4)])
    greedy = np.mean([potential(kmeanspp(x, 60, seed=s, trials=greedy_trials(60))) for s in range(4)])
    assert greedy < plain
    assert greedy_trials(1024) == 8 and greedy_trials(65536) == 13


def test_kmeanspp_reports_progress_and_handles_duplicates():
    x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)  # 3 distinct points, k = 6 > 3
    steps = []
    centres = kmeanspp(x, 6, seed=0, trials=3, progress=steps.append)
    assert centres.shape == (6, 3)
    assert {tuple(c) for c in centres.tolist()} == {tuple(r) for r in np.eye(3).tolist()}
    assert sum(steps) == 5  # every centre after the first


def test_minibatch_records_its_sampling():
    x, _ = planted_blobs()
    backend = SklearnMiniBatchKMeans(batch_size=64)
    result = backend.fit(x, 8, seed=0, niter=5)
    assert result.info["init_size"] == 192
    assert backend.settings["batch_size"] == 64


def test_sklearn_stops_at_convergence():
    x, _ = planted_blobs()
    result = SklearnKMeans().fit(x, 8, seed=0, niter=100)
    assert result.iterations < 100


def test_backends_reject_impossible_k():
    x = np.zeros((10, 2), dtype=np.float32)
    for backend in (FaissKMeans(), SklearnKMeans()):
        with pytest.raises(ValueError, match="2 <= k < n"):
            backend.fit(x, 10, seed=0, niter=1)


def test_assignment_helpers_match_their_definitions():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    c = rng.standard_normal((40, 5)).astype(np.float32)
    labels = nearest(x, c)
    np.testing.assert_array_equal(labels, squared_distances(x, c).argmin(axis=1))
    assert inertia(x, c, labels) == pytest.approx(squared_distances(x, c).min(axis=1).sum(), rel=1e-12)
    previous = np.full_like(c, 9.0)
    means = mean_centroids(x, labels, 40, previous)
    for j in range(40):
        members = x[labels == j]
        expected = members.mean(axis=0) if len(members) else previous[j]
        np.testing.assert_allclose(means[j], expected, rtol=1e-5, atol=1e-6)


def test_l2_normalize_and_finite_check():
    x = np.array([[3, 4], [0, 0], [1, 0]], dtype=np.float16)
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0], [1, 0]], rtol=1e-6)
    check_finite(out)
    bad = np.ones((5, 3), dtype=np.float32)
    bad[2, 1] = np.nan
    bad[4, 0] = np.inf
    with pytest.raises(DataError, match=r"2 of 5 rows \(first: row 2\)"):
        check_finite(bad)
