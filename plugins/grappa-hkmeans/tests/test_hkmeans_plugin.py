"""The hierarchical k-means clusterer: correctness, exact k, determinism, plugin registration."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from grappa_hkmeans import plugin
from grappa_hkmeans.hkmeans import HierarchicalKMeans, allocate, coarse_count


def blobs(n_blobs: int, n_per: int = 40, dim: int = 16, spread: float = 0.01, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_blobs), n_per)
    x = (centres[truth] + spread * rng.standard_normal((truth.size, dim))).astype(np.float32)
    perm = rng.permutation(truth.size)
    return x[perm], truth[perm]


def squared_distances(x, c):
    return ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(axis=2)


def check_partition(x, result, k):
    assert result.centroids.shape == (k, x.shape[1]) and result.centroids.dtype == np.float32
    assert result.labels.shape == (x.shape[0],)
    d2 = squared_distances(x, result.centroids)
    chosen = d2[np.arange(x.shape[0]), result.labels]
    np.testing.assert_allclose(chosen, d2.min(axis=1), rtol=1e-5, atol=1e-6)  # nearest centroid
    assert result.inertia == pytest.approx(chosen.sum(), rel=1e-9)


def test_coarse_count_is_about_sqrt_k():
    assert [coarse_count(k) for k in (2, 3, 4, 100, 65536, 131072)] == [1, 2, 2, 10, 256, 362]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_blobs", [8, 30])
def test_recovers_planted_blobs(n_blobs, seed):
    x, truth = blobs(n_blobs, seed=seed)
    result = HierarchicalKMeans().fit(x, n_blobs, seed=seed, niter=20)
    check_partition(x, result, n_blobs)
    pairs = set(zip(result.labels.tolist(), truth.tolist(), strict=True))
    assert len(pairs) == n_blobs == len(set(result.labels.tolist()))
    assert result.info["coarse_k"] == coarse_count(n_blobs)


@pytest.mark.parametrize("k", [2, 3, 7, 50, 199, 200, 399])
def test_returns_exactly_k_clusters(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    result = HierarchicalKMeans().fit(x, k, seed=0, niter=5)
    check_partition(x, result, k)
    assert result.sizes().sum() == 400
    # every centroid owns at least one point unless two ended up identical
    assert (result.sizes() == 0).sum() <= k // 20


def test_same_seed_same_result():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 12)).astype(np.float32)
    a = HierarchicalKMeans().fit(x, 100, seed=5, niter=5)
    b = HierarchicalKMeans().fit(x, 100, seed=5, niter=5)
    c = HierarchicalKMeans().fit(x, 100, seed=6, niter=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)


def test_refinement_never_increases_inertia():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    inertias = [HierarchicalKMeans(refine_iters=r).fit(x, 150, seed=0, niter=10).inertia for r in (0, 1, 3)]
    assert inertias[0] >= inertias[1] >= inertias[2]


@pytest.mark.parametrize(
    ("sizes", "k"),
    [([100, 50, 50], 8), ([10, 0, 1, 1, 100], 5), ([3, 3, 3], 8), ([1, 1, 1, 97], 4), ([5, 5], 10),
     ([123, 77, 301, 2, 0, 9], 97)],
)
def test_allocation_is_proportional_bounded_and_exact(sizes, k):
    sizes = np.array(sizes)
    counts = allocate(sizes, k)
    assert counts.sum() == k
    assert np.all(counts[sizes == 0] == 0)
    assert np.all(counts[sizes > 0] >= 1) and np.all(counts <= sizes)


def test_allocation_follows_largest_remainders_when_unconstrained():
    # shares 8 * [0.5, 0.3, 0.2] = [4, 2.4, 1.6] -> floors [4, 2, 1], the extra one goes to 1.6
    np.testing.assert_array_equal(allocate(np.array([50, 30, 20]), 8), [4, 2, 2])


def test_allocation_refuses_the_impossible():
    with pytest.raises(ValueError):
        allocate(np.array([2, 2]), 5)


def test_plugin_module_registers_the_clusterer():
    registered = []
    plugin.register_clusterers(register=registered.append)
    assert [c.name for c in registered] == ["hkmeans"]
    assert registered[0].settings["refine_iters"] == 2


def test_registering_imports_no_heavy_library():
    code = ("import sys; from grappa_hkmeans import plugin; found = []; "
            "plugin.register_clusterers(register=found.append); "
            "print([c.name for c in found], [m for m in ('faiss', 'sklearn', 'torch') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "['hkmeans'] []"


def test_grappa_plugins_lists_it(installed_distribution):
    env = {**os.environ, "GRAPPA_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "grappa_cli", "plugins", "--json"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    mine = [e for e in entries if e["name"].startswith("hkmeans")]
    assert len(mine) == 1, entries
    assert mine[0]["registers"] == {"clusterers": ["hkmeans"]}
    assert mine[0]["version"] == installed_distribution
    assert mine[0]["builtin"] is False
