"""Increments of the training set: the rows each update of ``data.train`` added.

The paper's motivating case is a retrieval system that learns a new domain from a pile of
unlabeled images of it, without starting over. When ``data.train`` only *grows* (the new
entries come after the old ones and the old images are unchanged), ``grappa extract``
appends the new images' features to ``features/train`` instead of redoing it (the old
rows stay bit-identical), and the rows form *increments*: increment 0 holds the images of
the first extraction, increment ``i`` those added by the ``i``-th update.

Each increment gets its own pseudo-granularities: increment 0's sets are the familiar
``k<K>`` (``[cluster] k`` resolved for its images); a later increment's are named after what
it added, ``k<K>-<name>`` (``[cluster] k_added`` resolved for the added images), clustered on
the added images alone and trained on them plus replayed images of the earlier increments
(:func:`replay_sources`, :mod:`grappa_cli.pipeline.stages.replay`). Sets of earlier increments
are never redone: they record
the fingerprint of the features *as they were* when made, and that fingerprint stays valid
as long as the features only grow (:func:`accepts`). The fusion is retrained over all sets
on the union, starting from the previous fused model (``[fuse] warm_start``).

``[data] update = "full"`` (or ``grappa run --full``) treats the grown training set as one
increment: every set is clustered and trained again on the union, as from scratch.

A features record keeps its increments under ``increments``: one entry per finished
increment with its end row, the ``data.train`` entries it added and the fingerprint the
record had when that increment was complete. A record from before increments existed is
one increment ending at its last row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.records.protocols import FeatureStore

#: ``k256`` (increment 0) or ``k16-coral`` (an added increment named after what it added)
SET_NAME = re.compile(r"^k(\d+)(?:-([A-Za-z0-9_.]+))?$")


@dataclass
class Increment:
    """Rows ``start..stop`` of ``features/train`` and what they came from."""

    index: int
    start: int
    stop: int
    parts: list[str] = field(default_factory=list)
    #: the features record's fingerprint once this increment was complete (None: not extracted yet)
    fingerprint: str | None = None

    @property
    def name(self) -> str:
        """``""`` for increment 0, else a short name of what it added (its first ``data.train`` entry)."""
        if self.index == 0:
            return ""
        return part_name(self.parts[0]) if self.parts else f"inc{self.index}"

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def set_name(self, k: int) -> str:
        """The adaptor set of this increment at ``k``: ``k256`` or ``k16-coral``."""
        return f"k{k}" if self.index == 0 else f"k{k}-{self.name}"

    def to_dict(self) -> dict[str, int | list[str] | str | None]:
        return {"stop": self.stop, "parts": list(self.parts), "fingerprint": self.fingerprint}


def part_name(part: str) -> str:
    """A ``data.train`` entry as a set-name suffix: a task's name, or a folder's last component."""
    text = Path(part).name if ("/" in part or "\\" in part) else part
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.") or "added"


def parse_set(name: str) -> tuple[int, str]:
    """``k256`` -> (256, ""); ``k16-coral`` -> (16, "coral"). ValueError for anything else."""
    match = SET_NAME.match(name)
    if not match:
        raise ValueError(f"not an adaptor set name: {name!r}")
    return int(match.group(1)), match.group(2) or ""


def is_set_name(name: str) -> bool:
    return SET_NAME.match(name) is not None


def set_sort_key(name: str) -> tuple[int, str, int]:
    """Increment 0's sets first, by k; then each added increment's, by name and k; others last."""
    try:
        k, suffix = parse_set(name)
    except ValueError:
        return (2, name, 0)
    return (1 if suffix else 0, suffix, k)


def recorded(record: dict[str, Any] | None, rows: int | None = None) -> list[Increment]:
    """The finished increments of a ``features/train`` record (empty when it has none yet).

    ``rows``: the stored row count, for a record made before increments existed that does not
    say how many images it holds.
    """
    if not record:
        return []
    entries = record.get("increments")
    if entries is None:  # made before increments existed: one increment, if it was finished
        if not record.get("complete"):
            return []
        count = int(record.get("images", rows or 0) or rows or 0)
        return [Increment(0, 0, count, [], record.get("fingerprint"))]
    found, start = [], 0
    for index, entry in enumerate(entries):
        stop = int(entry["stop"])
        found.append(Increment(index, start, stop, list(entry.get("parts") or []), entry.get("fingerprint")))
        start = stop
    return found


def accepts(record: dict[str, Any] | None, fingerprint: str | None) -> bool:
    """Whether an artifact made from ``features/train`` at ``fingerprint`` may still use it.

    True for the current fingerprint of a complete record and for the fingerprint of any
    finished increment: the rows it covered are still there, unchanged (they are only ever
    appended to), so what was made from them stays valid.
    """
    if not record or fingerprint is None:
        return False
    if record.get("complete") and record.get("fingerprint") == fingerprint:
        return True
    return any(inc.fingerprint == fingerprint for inc in recorded(record))


def growth(record: dict[str, Any] | None, paths: list[str], params: Mapping[str, object],
           prefix_fingerprint: Callable[[int], str | None]) -> int | None:
    """Rows of a ``features/train`` record that a new extraction of ``paths`` can keep, or None.

    The features grow instead of being redone when the record was made with the same
    parameters, its increments are finished (or it is itself growing), and the new image list
    starts with exactly the images it holds, unchanged (``prefix_fingerprint(n)`` is the
    fingerprint of the first ``n`` paths as the record would have recorded it).
    Returns the number of rows kept (< ``len(paths)``), or None when the features must be
    extracted from scratch (or are already complete for ``paths``).
    """
    done = recorded(record)
    if not record or not done or record.get("params") != params:
        return None
    kept = done[-1].stop
    if kept >= len(paths):
        return None
    if prefix_fingerprint(kept) != done[-1].fingerprint:
        return None
    return kept


def prefix_fingerprint(params: Mapping[str, object], paths: list[str], n: int) -> str:
    """The fingerprint a ``features/train`` record of the first ``n`` of ``paths`` has (see :func:`growth`)."""
    from grappa_cli.data.tasks.base import ImageList
    from grappa_cli.records import provenance as prov

    images = ImageList(paths=paths[:n], labels=None, classes=[]).fingerprint()
    return prov.fingerprint({"params": params, "inputs": {"images": images}})


def layout(record: dict[str, Any] | None, total: int, parts: list[str], mode: str) -> list[Increment]:
    """The increments the training set of ``total`` rows (from ``parts``) is to have.

    ``mode`` ``"full"`` (or a record that cannot grow, ``grown=None``): one increment of
    every row. Otherwise the recorded increments plus, when ``total`` is larger, one new
    increment of the remaining rows, made of the ``parts`` that no recorded increment holds.
    Callers pass a record only when :func:`growth` (or an equal rows check) says it is kept.
    """
    done = recorded(record)
    if mode == "full" or not done:
        return [Increment(0, 0, total, list(parts))]
    if done[-1].stop > total:
        return [Increment(0, 0, total, list(parts))]
    increments = list(done)
    if total > done[-1].stop:
        known = {p for inc in done for p in inc.parts}
        added = [p for p in parts if p not in known] if known else []
        increments.append(Increment(len(done), done[-1].stop, total, added))
    return increments


@dataclass
class IncrementSets:
    """One increment with the k values configured for it and the fingerprint its sets depend on."""

    increment: Increment
    ks: list[int]
    #: the ``features/train`` fingerprint the increment's clusterings record (None: not extracted yet)
    features: str | None
    #: training rows clustered (readable images of the increment; an estimate before extraction)
    images: int

    @property
    def names(self) -> list[str]:
        return [self.increment.set_name(k) for k in self.ks]


def stored(store: FeatureStore | None) -> list[Increment]:
    """The finished increments of the store's training features (empty when there are none)."""
    if store is None or not store.exists("features/train"):
        return []
    rows = None
    if store.exists("features/train/embeddings"):
        rows = int(store.array("features/train/embeddings").shape[0])
    return recorded(store.provenance("features/train"), rows)


def usable_in(store: FeatureStore | None, increment: Increment) -> int:
    """Readable training images in ``increment`` (``features/train/valid`` in its rows)."""
    import numpy as np

    assert store is not None  # increments are only stored in a store
    if not store.exists("features/train/valid"):
        return increment.rows
    valid = np.asarray(store.array("features/train/valid")[increment.start:increment.stop], dtype=bool)
    return int(valid.sum())


def configured(config: GrappaConfig, store: FeatureStore | None, pending: list[Increment] | None = None, *,
               use_stored: bool = True) -> list[IncrementSets]:
    """The adaptor sets of every increment: ``[cluster] k`` for the first, ``k_added`` for the others.

    ``pending``: increments still to extract (their image counts estimate the readable ones);
    ``use_stored=False`` when the stored features are to be redone (their increments go).
    Raises the k resolution's error (a k that does not fit an increment's image count).
    """
    found = [(inc, usable_in(store, inc), inc.fingerprint) for inc in (stored(store) if use_stored else [])]
    found += [(inc, inc.rows, None) for inc in pending or []]
    return [IncrementSets(inc, ks_for(config, inc, images), features, images) for inc, images, features in found]


def ks_for(config: GrappaConfig, increment: Increment, images: int) -> list[int]:
    """``[cluster] k`` (increment 0) or ``k_added`` (the others) resolved for ``images`` images."""
    from grappa_cli.clustering import kvalues

    first = increment.index == 0
    spec = config.cluster.k if first else config.cluster.k_added
    if isinstance(spec, list):  # explicit: increment 0's are checked by `grappa cluster`; others must fit
        return sorted(set(spec)) if first else sorted(k for k in set(spec) if 2 <= k < images)
    if images < 4:
        return []
    source = "grappa.toml [cluster] k" if first else f"grappa.toml [cluster] k_added ({increment.name})"
    count = config.cluster.auto_count if first else config.cluster.auto_count_added
    return list(kvalues.resolve(spec, images, auto_count=count, auto_min_k=config.cluster.auto_min_k,
                                source=source))


def set_names(config: GrappaConfig, store: FeatureStore | None) -> list[str]:
    """Every configured adaptor set of the stored increments, in fusion order."""
    return [name for entry in configured(config, store) for name in entry.names]


def set_params(increment: Increment) -> dict[str, str | list[int]]:
    """What a set of an added increment records besides k: which increment (rows) it learned from.

    Increment 0's sets record nothing more, so projects that never grew keep their fingerprints.
    """
    if increment.index == 0:
        return {}
    return {"increment": increment.name, "rows": [increment.start, increment.stop]}


def replay_sources(sets: list[IncrementSets], name: str) -> list[str]:
    """The clusterings that label earlier increments' images while the added set ``name`` trains.

    One per earlier increment: its set nearest to ``name``'s k on a log scale (the smaller k
    on a tie), so the replayed images are classified at about the granularity the new images
    are. Empty for increment 0's sets and when no earlier increment has a set.
    """
    import math

    k, _ = parse_set(name)
    owner = next((entry for entry in sets if name in entry.names), None)
    if owner is None or owner.increment.index == 0:
        return []
    sources = []
    for entry in sets:
        if entry.increment.index >= owner.increment.index or not entry.ks:
            continue
        nearest = min(entry.ks, key=lambda other: (abs(math.log(other / k)), other))
        sources.append(entry.increment.set_name(nearest))
    return sources
