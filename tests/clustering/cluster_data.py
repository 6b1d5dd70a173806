"""Data helpers of the clustering tests: planted blobs and stored training features."""

from __future__ import annotations

import numpy as np


def planted_blobs(n_per: int = 50, n_blobs: int = 8, dim: int = 16, spread: float = 0.01,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated blobs: unit-norm random centres, isotropic noise of std ``spread``.

    Random unit vectors in 16-D are at distance ~1.4 from each other, 140 noise std apart,
    so k-means++ seeding lands one seed per blob with overwhelming probability (D² weights
    ~2 between blobs against ~0.0016 inside one) and Lloyd recovers them exactly.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_blobs), n_per)
    x = centres[truth] + spread * rng.standard_normal((truth.size, dim))
    perm = rng.permutation(truth.size)
    return x[perm].astype(np.float32), truth[perm]


def write_features(project, x: np.ndarray, *, complete: bool = True, tag: str = "v1",
                   valid: np.ndarray | None = None) -> dict:
    """Store ``x`` as ``features/train`` the way ``grappa extract`` does; returns its record.

    ``valid``: the per-row readability mask extract writes (rows of unreadable images hold zeros).
    """
    store = project.store()
    store.delete("features/train")
    store.begin("features/train", "extract", {"backbone": "test", "tag": tag}, {})
    store.write_array("features/train/embeddings", x)
    store.write_array("features/train/paths", np.array([f"img_{i:05d}.png" for i in range(x.shape[0])]))
    if valid is not None:
        store.write_array("features/train/valid", np.asarray(valid, dtype=bool))
    if complete:
        store.finish("features/train", n=int(x.shape[0]))
    return store.provenance("features/train")
