"""The threaded relevance path: workers share the Gram blocks and the panels' finishing.

Whatever the number of workers, the relevance pattern must equal the serial one (and the
exact full ranking) bit for bit, errors must surface, and torch's thread setting must be
left as the caller had it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grappa_cli.retrieval import relevance
from grappa_cli.retrieval.metrics import _UNIT, Ranking, neighbors, retrieval_metrics
from grappa_cli.retrieval.relevance import float32_error_bound, top_relevance


def clustered(seed: int, n: int = 400, dim: int = 24, classes: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, dim)) + 0.6 * rng.standard_normal((classes, dim))[labels]
    return x.astype(np.float32), labels


def tie_heavy(seed: int, n: int = 260, bases: int = 25, dim: int = 5,
              classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Many exact duplicates across classes: ties broken by index, chains mixing relevance."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((bases, dim))[rng.integers(0, bases, n)]
    labels = rng.integers(0, classes, n)
    labels[:2] = [classes, classes + 1]  # singletons: in the gallery, never queries
    return x, labels


def run(x: np.ndarray, labels: np.ndarray, *, workers: int, block: int, symmetric: bool | None,
        sample: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ranking = Ranking(x, labels)
    depths = np.zeros(ranking.n, dtype=np.int64)
    depths[ranking.queries] = ranking.r[ranking.queries]
    parts = list(top_relevance(ranking.grid, ranking.labels, depths, eps=float32_error_bound(ranking.dim),
                               unit=_UNIT, exact=lambda rows, depth: ranking._rank_exhaustive(rows, depth)[0],
                               block=block, sample=sample, symmetric=symmetric, workers=workers))
    return np.concatenate([q for q, _ in parts]), np.concatenate([r for _, r in parts]), depths


@pytest.mark.parametrize("data", ["clustered", "tie_heavy"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [16, 100, 1000])
def test_workers_give_the_serial_and_the_exact_relevance(data, symmetric, block):
    x, labels = clustered(11) if data == "clustered" else tie_heavy(12)
    serial_q, serial, depths = run(x, labels, workers=1, block=block, symmetric=symmetric)
    for workers in (2, 3):
        q, got, _ = run(x, labels, workers=workers, block=block, symmetric=symmetric)
        assert np.array_equal(q, serial_q)
        assert np.array_equal(got, serial)
    chunks = list(neighbors(x, labels, depth=int(depths.max())))
    expected = np.concatenate([c.relevant for c in chunks])
    assert np.array_equal(np.concatenate([c.query_indices for c in chunks]), serial_q)
    inside = np.arange(serial.shape[1])[None, :] < depths[serial_q][:, None]
    assert np.array_equal(serial, expected & inside)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_metrics_do_not_depend_on_torch_threads(threads):
    x, labels = tie_heavy(13, n=500)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = retrieval_metrics(x, labels, recall_at=(1, 4), chunk_size=37, device="cpu")
        torch.set_num_threads(threads)
        got = retrieval_metrics(x, labels, recall_at=(1, 4), chunk_size=37, device="cpu")
        assert got == reference
        assert torch.get_num_threads() == threads  # the workers' one-thread setting is undone
    finally:
        torch.set_num_threads(before)


def test_a_failing_panel_raises_and_restores_torch_threads(monkeypatch):
    x, labels = clustered(14)
    calls: list[int] = []
    original = relevance._finalise

    def failing(queries, *args):
        calls.append(len(queries))
        if len(calls) == 3:
            raise RuntimeError("panel failed")
        return original(queries, *args)

    monkeypatch.setattr(relevance, "_finalise", failing)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="panel failed"):
            run(x, labels, workers=2, block=32, symmetric=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_stopping_early_shuts_the_workers_down():
    x, labels = clustered(15)
    ranking = Ranking(x, labels)
    depths = np.where(ranking.r > 0, ranking.r, 0)
    gen = top_relevance(ranking.grid, ranking.labels, depths, eps=float32_error_bound(ranking.dim), unit=_UNIT,
                        exact=lambda rows, depth: ranking._rank_exhaustive(rows, depth)[0], block=20, workers=2)
    queries, _ = next(gen)
    assert len(queries)
    gen.close()  # the pool's threads finish their tasks and stop
    import threading

    assert not [t for t in threading.enumerate() if t.name.startswith("grappa-relevance")]
