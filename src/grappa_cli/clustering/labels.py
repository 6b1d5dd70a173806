"""Stored pseudo-labels by training row: what training on clustering k reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from grappa_cli.errors import StoreError
from grappa_cli.records.artifacts import FEATURES_TRAIN, cluster_key

if TYPE_CHECKING:  # annotations only
    from grappa_cli.storage.store import Store


def training_labels(store: Store, k: int | str) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-labels under clustering k by training row (-1: none) and which rows are usable.

    A clustering made before the training set grew covers its first rows only: the rows
    added since have no label under it (-1).
    """
    valid = store.read(f"{FEATURES_TRAIN}/valid").astype(bool)
    labels = store.read(f"{cluster_key(k)}/labels").astype(np.int64)
    if len(labels) > len(valid):
        raise StoreError(f"{cluster_key(k)} has {len(labels)} labels for {len(valid)} training images",
                         hint="rerun `grappa cluster --force`")
    if len(labels) < len(valid):
        labels = np.concatenate([labels, np.full(len(valid) - len(labels), -1, dtype=np.int64)])
    return labels, valid & (labels >= 0)
