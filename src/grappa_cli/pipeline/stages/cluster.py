"""Step 1 of Grappa: cluster the training features at several k (pseudo-granularities).

For each k the stage writes the group ``clusters/k<K>`` of the store:

* ``centroids`` float32 [k, D], ``labels`` int32 [n] (row i of ``features/train``; -1
  for a row whose image could not be read, ``features/train/valid`` false), ``sizes``
  int64 [k];
* a provenance record: parameters (k, backend, seed, niter, normalisation and the
  backend's own settings), the fingerprint of the ``features/train`` record it was made
  from, and on completion a summary, the inertia, iterations, seconds and empty clusters.

Data is written after the record is begun and before it is finished, so an interrupted
run leaves a ``partial`` group that the next run redoes. A complete group made with the
same parameters and features is skipped; one made from other features or parameters is
refused unless ``force`` (nothing is recomputed behind the user's back).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from grappa_cli import plugins
from grappa_cli.clustering import kvalues
from grappa_cli.clustering.base import Clusterer, settings_of
from grappa_cli.clustering.labels import training_labels
from grappa_cli.console import NullReporter, Reporter
from grappa_cli.errors import StoreError
from grappa_cli.pipeline.freshness import require_current
from grappa_cli.project import Project
from grappa_cli.records import artifacts, increments
from grappa_cli.records.provenance import describe_mismatch

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.records.increments import Increment, IncrementSets
    from grappa_cli.storage.store import Store

__all__ = ["cluster_key", "cluster_params", "run", "training_labels"]

FEATURES_KEY = artifacts.FEATURES_TRAIN
EMBEDDINGS_KEY = f"{FEATURES_KEY}/embeddings"
VALID_KEY = f"{FEATURES_KEY}/valid"
#: Label of a training row that was not clustered (its image could not be read).
NO_LABEL = -1
NORMALIZATION = "l2"
#: Keys of the stage's own parameters; a backend setting never overrides them.
_CORE_PARAMS = ("k", "backend", "seed", "niter", "normalize")


cluster_key = artifacts.cluster_key


def cluster_params(k: int, backend: str, seed: int, niter: int, settings: Mapping[str, object]) -> dict[str, object]:
    """The parameters recorded for (and fingerprinting) one k-means run."""
    params: dict[str, object] = {k_: v for k_, v in settings.items() if k_ not in _CORE_PARAMS}
    params.update({"k": int(k), "backend": backend, "seed": int(seed), "niter": int(niter),
                   "normalize": NORMALIZATION})
    return params


@dataclass
class KOutcome:
    """What happened to one k: clustered now, or skipped because it was already complete."""

    k: int
    status: str  # "clustered" | "skipped"
    empty: int
    min_size: int
    median_size: float
    max_size: int
    inertia: float
    iterations: int
    seconds: float
    info: dict[str, object] = field(default_factory=dict)
    #: the set's name: ``k<K>``, or ``k<K>-<added>`` for images added by an incremental update
    name: str = ""


@dataclass
class ClusterReport:
    """The result of the stage: feature shape, settings and one outcome per k."""

    n: int  # training images clustered (rows whose image could be read)
    dim: int
    unreadable: int  # rows of features/train left out (label -1)
    backend: str
    seed: int
    niter: int
    outcomes: list[KOutcome]

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["clusters"] = data.pop("outcomes")
        return data


class SizeSummary(TypedDict):
    """A clustering's cluster sizes (its record's ``summary``)."""

    k: int
    empty: int
    min: int
    median: float
    max: int


def size_summary(k: int, sizes: np.ndarray) -> SizeSummary:
    """The small dict `grappa status` shows for a pseudo-label set."""
    return {"k": int(k), "empty": int((sizes == 0).sum()), "min": int(sizes.min()),
            "median": float(np.median(sizes)), "max": int(sizes.max())}


def features_record(store: Store) -> dict[str, object]:
    """The complete provenance record of ``features/train`` or a one-line error saying how to make it."""
    record = store.provenance(FEATURES_KEY)
    if record is None or not record.get("complete") or not store.exists(EMBEDDINGS_KEY):
        state = "are incomplete" if record else "do not exist"
        raise StoreError(f"no extracted features yet (training features {state})",
                         hint="run `grappa extract`")
    return record


def run(
    project: Project,
    *,
    k: str | Sequence[int] | None = None,
    backend: str | None = None,
    seed: int | None = None,
    niter: int | None = None,
    force: bool = False,
    refresh: bool = False,
    reporter: Reporter | None = None,
) -> ClusterReport:
    """Cluster ``features/train`` at every requested k; returns what was done (prints nothing).

    ``k``, ``backend``, ``seed`` and ``niter`` default to ``[cluster]`` in ``grappa.toml``.
    ``refresh`` redoes stale k values instead of refusing them (what ``grappa run`` does).
    All checks (features present, k valid, backend known, no stale result in the way) run
    before anything is written.
    """
    reporter = reporter or NullReporter()
    cfg = project.config().cluster
    backend = backend or cfg.backend
    seed = cfg.seed if seed is None else seed
    niter = cfg.niter if niter is None else niter
    clusterer = plugins.get("clusterers", backend)

    store = project.store()
    features_record(store)
    require_current(project, FEATURES_KEY, "the training features")  # never cluster stale features
    embeddings = store.array(EMBEDDINGS_KEY)
    if len(embeddings.shape) != 2:
        raise StoreError(f"{EMBEDDINGS_KEY} has shape {tuple(embeddings.shape)}, expected [n, D]",
                         hint="re-extract with `grappa extract --force`")
    n_rows, dim = (int(s) for s in embeddings.shape)
    all_rows = usable_rows(store, n_rows)
    work = _work(project.config(), store, all_rows, k)

    settings = settings_of(clusterer)
    todo: list[tuple[str, int, IncrementSets]] = []
    skipped: dict[str, dict[str, Any]] = {}  # the complete records, as stored
    for name, value, entry in work:
        key = cluster_key(name)
        params = {**cluster_params(value, backend, seed, niter, settings), **increments.set_params(entry.increment)}
        inputs = {FEATURES_KEY: entry.features}
        state = store.state(key, params, inputs)
        old = store.provenance(key)
        if force or state in ("missing", "partial"):
            todo.append((name, value, entry))
        elif state == "complete":
            skipped[name] = old or {}
        elif refresh or (old is not None and not old.get("complete")):  # stale, or unfinished with other settings
            todo.append((name, value, entry))
        else:
            difference = describe_mismatch(old or {}, params, inputs)
            raise StoreError(
                f"{key} was made from other features or settings ({difference})",
                hint=f"redo it with `grappa cluster --k {value} --force`",
            )

    points = _load_points(store, all_rows) if todo else None
    outcomes = []
    for name, value, entry in work:
        if name in skipped:
            reporter.log(f"{cluster_key(name)} is complete; skipped (use --force to redo it)")
            outcomes.append(_outcome_from_record(value, skipped[name], name))
            continue
        assert points is not None
        inc = entry.increment
        inside = (all_rows >= inc.start) & (all_rows < inc.stop)
        outcomes.append(_cluster_one(store, clusterer, points[inside], all_rows[inside], n_rows, value, backend,
                                     seed, niter, settings, {FEATURES_KEY: entry.features}, reporter,
                                     name=name, increment=inc))
    return ClusterReport(len(all_rows), dim, n_rows - len(all_rows), backend, seed, niter, outcomes)


def _work(config: GrappaConfig, store: Store, rows: np.ndarray,
          k: str | Sequence[int] | None) -> list[tuple[str, int, IncrementSets]]:
    """(set name, k, increment) of every clustering to make.

    Without ``k``: every increment's configured sets (:mod:`grappa_cli.records.increments`). With ``k``
    (``grappa cluster --k``): those k values for the first increment (all images, unless the
    training set grew incrementally).
    """
    cfg = config.cluster
    entries = increments.configured(config, store)
    if k is None and all(entry.increment.index == 0 for entry in entries):
        # checked here: a k too large for the images fails before any work
        entries[0].ks = kvalues.resolve(cfg.k, entries[0].images, auto_count=cfg.auto_count,
                                        auto_min_k=cfg.auto_min_k, source="grappa.toml [cluster] k")
    elif k is not None:
        entries = entries[:1]
        entries[0].ks = kvalues.resolve(k, entries[0].images, auto_count=cfg.auto_count,
                                        auto_min_k=cfg.auto_min_k, source="--k")
    return [(name, value, entry) for entry in entries for value, name in zip(entry.ks, entry.names, strict=True)]


def usable_rows(store: Store, n_rows: int) -> np.ndarray:
    """Indices of the training rows to cluster: all, or those ``features/train/valid`` marks readable."""
    if not store.exists(VALID_KEY):
        return np.arange(n_rows)
    valid = store.read(VALID_KEY).astype(bool)
    if valid.shape != (n_rows,):
        raise StoreError(f"{VALID_KEY} has shape {valid.shape} for {n_rows} feature rows",
                         hint="re-extract with `grappa extract --force`")
    if not valid.any():
        raise StoreError("none of the training images could be read, so there is nothing to cluster",
                         hint="check the dataset roots in grappa.toml and rerun `grappa extract --force`")
    return np.flatnonzero(valid)


def _load_points(store: Store, rows: np.ndarray) -> np.ndarray:
    """The usable training features as L2-normalised float32, refusing NaN/inf."""
    from grappa_cli.clustering.vectors import check_finite, l2_normalize

    raw = store.read(EMBEDDINGS_KEY)
    if len(rows) != raw.shape[0]:
        raw = raw[rows]
    check_finite(raw, what=f"the training features ({EMBEDDINGS_KEY})")
    return l2_normalize(raw)


def _cluster_one(
    store: Store, clusterer: Clusterer, x: np.ndarray, rows: np.ndarray, n_rows: int, k: int, backend: str,
    seed: int, niter: int, settings: Mapping[str, object], inputs: dict[str, str | None], reporter: Reporter, *,
    name: str | None = None, increment: Increment | None = None,
) -> KOutcome:
    key = cluster_key(name or k)
    start = time.perf_counter()
    result = clusterer.fit(x, k, seed=seed, niter=niter, reporter=reporter)
    seconds = time.perf_counter() - start
    labels = np.asarray(result.labels)
    centroids = np.asarray(result.centroids, dtype=np.float32)
    if centroids.shape != (k, x.shape[1]) or labels.shape != (x.shape[0],):
        raise StoreError(
            f"clusterer {backend!r} returned centroids {centroids.shape} and labels {labels.shape} "
            f"for k={k}, n={x.shape[0]}, D={x.shape[1]}",
            hint="report this to the plugin's authors or use another --backend",
        )
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    summary = size_summary(k, sizes)
    all_labels = np.full(n_rows, NO_LABEL, dtype=np.int32)
    all_labels[rows] = labels

    store.delete(key)
    store.write_array(f"{key}/centroids", centroids)
    store.write_array(f"{key}/labels", all_labels)
    store.write_array(f"{key}/sizes", sizes)
    # The record last, complete in one write: arrays without it are remade, never used.
    extra = increments.set_params(increment) if increment is not None else {}
    store.commit(key, "cluster", {**cluster_params(k, backend, seed, niter, settings), **extra}, inputs,
                 summary=summary, inertia=float(result.inertia), iterations=int(result.iterations),
                 seconds=round(seconds, 3), empty_clusters=summary["empty"], n=int(x.shape[0]),
                 unlabeled_rows=int(n_rows - x.shape[0]),
                 info=_jsonable(result.info), trained_on=trained_on(increment, int(x.shape[0])))
    return KOutcome(k, "clustered", summary["empty"], summary["min"], summary["median"], summary["max"],
                    float(result.inertia), int(result.iterations), seconds, dict(result.info), name or f"k{k}")


def trained_on(increment: Increment | None, images: int) -> dict[str, object]:
    """Which training images a clustering or adaptor set saw: rows of ``features/train`` and their sources."""
    if increment is None:
        return {"images": images}
    return {"rows": [increment.start, increment.stop], "parts": list(increment.parts), "images": images}


def _outcome_from_record(k: int, record: dict[str, Any], name: str | None = None) -> KOutcome:
    summary = record.get("summary") or {}
    return KOutcome(k, "skipped", int(summary.get("empty", 0)), int(summary.get("min", 0)),
                    float(summary.get("median", 0.0)), int(summary.get("max", 0)),
                    float(record.get("inertia", float("nan"))), int(record.get("iterations", 0)),
                    float(record.get("seconds", 0.0)), dict(record.get("info") or {}), name or f"k{k}")


def _jsonable(value: object) -> object:
    """Backend info made safe for zarr attributes (numpy scalars and arrays to Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
