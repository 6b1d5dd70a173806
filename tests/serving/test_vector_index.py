"""faiss index construction: exact inner products, IVF and HNSW recall, row ids, files."""

from __future__ import annotations

import numpy as np
import pytest

from grappa_cli.errors import UsageError
from grappa_cli.serving.vector_index import (
    IndexSettings,
    build_index,
    configure_search,
    default_nlist,
    default_nprobe,
    load_index,
    save_index,
    search,
)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 20 random centres (like embeddings of 20 classes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_defaults() -> None:
    assert default_nlist(10_000) == 400 and default_nlist(1_000_000) == 4000 and default_nlist(1) == 4
    assert default_nprobe(400) == 20 and default_nprobe(4000) == 63 and default_nprobe(20) == 16
    assert default_nprobe(5) == 5
    settings = IndexSettings("ivf").resolved(24)
    assert (settings.nlist, settings.nprobe) == (20, 16)
    assert IndexSettings("ivf", nlist=100).resolved(10).nlist == 10  # never more lists than vectors
    assert IndexSettings("flat").params() == {"kind": "flat"}
    assert IndexSettings("hnsw").params() == {"kind": "hnsw", "hnsw_m": 32, "ef_construction": 200, "ef_search": 128}
    with pytest.raises(UsageError, match="unknown index type"):
        IndexSettings("annoy")
    with pytest.raises(UsageError, match="at least 1"):
        IndexSettings("ivf", nprobe=0)


def test_indexes_against_brute_force(tmp_path) -> None:
    x = clustered(3000, 32, seed=0)
    queries = clustered(200, 32, seed=1)
    rows = np.arange(len(x)) * 3 + 5  # store rows with holes (unreadable images)
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :10]

    flat = build_index(IndexSettings("flat").resolved(len(x)), 32, [(rows[:1000], x[:1000]), (rows[1000:], x[1000:])])
    scores, found = search(flat, queries, 10)
    np.testing.assert_array_equal(found, rows[exact])
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ x.T, exact, axis=1), atol=1e-5)

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, rows[exact], strict=True)]))

    ivf_settings = IndexSettings("ivf").resolved(len(x))
    assert (ivf_settings.nlist, ivf_settings.nprobe) == (219, 16)
    ivf = build_index(ivf_settings, 32, [(rows, x)], training=x)
    by_default = recall(search(ivf, queries, 10)[1])
    configure_search(ivf, nprobe=1)
    one = recall(search(ivf, queries, 10)[1])
    configure_search(ivf, nprobe=ivf_settings.nlist)  # all lists: exact
    _, all_lists = search(ivf, queries, 10)
    np.testing.assert_array_equal(all_lists, rows[exact])
    assert one < by_default < 1.0 and by_default > 0.8  # recall grows with nprobe
    configure_search(ivf, nprobe=16)
    _, self_hits = search(ivf, x[:300], 1)  # every vector lies in its own nearest list
    configure_search(ivf, nprobe=1)
    _, one_list = search(ivf, x[:300], 1)
    np.testing.assert_array_equal(self_hits[:, 0], rows[:300])
    np.testing.assert_array_equal(one_list[:, 0], rows[:300])

    hnsw = build_index(IndexSettings("hnsw").resolved(len(x)), 32, [(rows, x)])
    assert recall(search(hnsw, queries, 10)[1]) >= 0.95
    _, approx = search(hnsw, queries, 1)

    save_index(hnsw, tmp_path / "h.faiss")
    again = load_index(tmp_path / "h.faiss")
    assert again.ntotal == len(x)
    configure_search(again, ef_search=512)
    _, reloaded = search(again, queries, 1)
    assert np.mean(reloaded[:, 0] == rows[exact[:, 0]]) >= np.mean(approx[:, 0] == rows[exact[:, 0]])
    assert [p.name for p in tmp_path.iterdir()] == ["h.faiss"]

    _, few = search(flat, queries[:2], len(x) + 5)  # more than the index holds: -1 padding
    assert (few[:, -5:] == -1).all() and (few[:, :-5] >= 0).all()
