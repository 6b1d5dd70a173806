"""Checks and preparation of the points handed to k-means."""

from __future__ import annotations

import numpy as np

from grappa_cli.errors import DataError

#: Rows processed at a time, so float64 temporaries stay small for large n.
BLOCK_ROWS = 65536


def check_finite(x: np.ndarray, what: str = "features") -> None:
    """Raise :class:`DataError` if any value is NaN or infinite (k-means would be garbage)."""
    bad_rows = 0
    first = -1
    for start in range(0, x.shape[0], BLOCK_ROWS):
        block = np.asarray(x[start:start + BLOCK_ROWS])
        rows = ~np.isfinite(block).all(axis=1)
        if rows.any():
            if first < 0:
                first = start + int(np.flatnonzero(rows)[0])
            bad_rows += int(rows.sum())
    if bad_rows:
        raise DataError(
            f"{what} hold NaN or infinite values in {bad_rows} of {x.shape[0]} rows (first: row {first})",
            hint="re-extract them with `grappa extract --force`",
        )


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (zero rows stay zero).

    Retrieval compares features by cosine similarity; on unit vectors squared Euclidean
    distance is ``2 - 2 cos``, so Euclidean k-means on them partitions by cosine.
    """
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], BLOCK_ROWS):
        block = np.asarray(x[start:start + BLOCK_ROWS], dtype=np.float32)
        norms = np.linalg.norm(block.astype(np.float64), axis=1, keepdims=True)
        out[start:start + block.shape[0]] = block / np.maximum(norms, 1e-12)
    return out
