"""Replay: an added adaptor set also learns images of the earlier increments.

An incremental update (:mod:`grappa_cli.records.increments`) trains new adaptor sets on pseudo-labels
of the added images. Trained on those alone, a set fits a few hundred images, and its
adaptors act on every image the model embeds: on validation classes, sets trained on 72
added photographs alone retrieved *below* the frozen backbone on them, while the sets of the
first increment, which never saw a photograph, retrieved above it (docs/benchmarks.md,
"Adding a domain"). So each added set also classifies ``[adapt] replay`` times as many images
of the earlier increments as it has added ones, drawn with the run's seed and labelled by
their own increment's clustering nearest in k (:func:`grappa_cli.records.increments.replay_sources`):
the label spaces are concatenated (the added clusters first), and so are the starts of the
norm-softmax prototypes (each clustering's centroids). The training length follows the larger
set as for any set (``fit_to_size``): on small increments, where ``min_steps`` sets it, replay
about doubles the added sets' steps; keeping the steps of the added images alone (each seen half
as often) gained half as much on the validation classes. The old sets and clusterings are only
read; the set's ``trained_on`` records the clusterings it replayed and how many images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from grappa_cli.pipeline.stages.cluster import training_labels
from grappa_cli.records import increments

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.records.increments import IncrementSets
    from grappa_cli.storage.store import Store


def plan(config: GrappaConfig, sets: list[IncrementSets], name: str) -> tuple[dict[str, object], list[str]]:
    """What replay adds to the set ``name``: its params (``replay``, recorded by every added set,
    0 included, so that changing it retrains them) and the clusterings it replays (its extra
    inputs; empty: no replay). ``sets``: the increments' sets (:func:`increments.configured`);
    the stage and the planner both ask here, so they agree on the set's fingerprint."""
    if not increments.parse_set(name)[1]:
        return {}, []
    replayed = increments.replay_sources(sets, name) if float(config.adapt.replay) > 0 else []
    return {"replay": config.adapt.replay}, replayed


def sources(config: GrappaConfig, store: Store, name: str) -> list[str]:
    """The clusterings replayed while the set ``name`` trains (empty: no replay)."""
    return plan(config, increments.configured(config, store), name)[1]


def classes(name: str, replayed: list[str]) -> int:
    """Classes of the set's classifier: its own k, then each replayed clustering's."""
    return sum(increments.parse_set(n)[0] for n in [name, *replayed])


def labelled_rows(store: Store, name: str, replayed: list[str], per_image: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels by training row (-1: none), the rows to train on, and how many of them are replayed.

    The added rows keep their labels under ``name``; ``per_image`` times as many rows of the
    earlier increments (at most all of them) are drawn without replacement and labelled by
    the replayed clusterings, shifted past the classes before them.
    """
    labels, keep = training_labels(store, name)
    wanted = round(float(per_image) * int(keep.sum()))
    if not replayed or wanted <= 0:
        return labels, keep, 0
    offset = increments.parse_set(name)[0]
    pool_rows, pool_labels = [], []
    for source in replayed:
        source_labels, source_keep = training_labels(store, source)
        rows = np.flatnonzero(source_keep & ~keep)
        pool_rows.append(rows)
        pool_labels.append(source_labels[rows] + offset)
        offset += increments.parse_set(source)[0]
    rows, shifted = np.concatenate(pool_rows), np.concatenate(pool_labels)
    picked = np.random.default_rng(int(seed)).choice(len(rows), size=min(wanted, len(rows)), replace=False)
    labels, keep = labels.copy(), keep.copy()
    labels[rows[picked]] = shifted[picked]
    keep[rows[picked]] = True
    return labels, keep, len(picked)

