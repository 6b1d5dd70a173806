"""Names for everything a project produces, and their provenance records.

An artifact id names one output of a stage:

* ``features/train``, ``features/test/<task>``, ``clusters/k<K>``, ``eval/<model>/<task>``,
  ``knn/<name>``: groups in ``store.zarr`` (record in the group's ``attrs["grappa"]``);
* ``adaptors/k<K>``, ``fusion/<strategy>``: safetensors files under ``checkpoints/``
  (record in the file's metadata under ``"grappa"``);
* ``results/<model>/<task>``: JSON files (record under ``"provenance"``).

A record's ``inputs`` maps the ids of the artifacts it was made from to their
fingerprints at that time; an artifact is *stale* when an input's current fingerprint
differs. This one rule drives ``grappa status`` and ``grappa run``.

A fingerprint says which settings and inputs made an artifact, not which bytes a training
wrote: two trainings with the same settings can write different weights (a GPU's
non-deterministic kernels, a retrain with ``--force`` after upgrading grappa). What is
computed *from* weights (test embeddings, results, gallery indexes) therefore also records
:func:`checkpoint_digest` of the files it used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grappa_cli.records.protocols import ProjectPaths, RecordStore

STORE_PREFIXES = ("features/", "clusters/", "eval/", "knn/", "cache/", "gallery/")
#: The backbone features of the training set D (``grappa extract``).
FEATURES_TRAIN = "features/train"


def cluster_key(k: int | str) -> str:
    """Store group of one pseudo-label set: ``clusters/k256`` (k) or ``clusters/k16-coral`` (a set name)."""
    return f"clusters/{k}" if isinstance(k, str) else f"clusters/k{k}"


def test_features(task: str) -> str:
    """``features/test/<task>``: the backbone features of a task's test split."""
    return f"features/test/{task}"


@dataclass
class Verdict:
    """What :func:`judge` decided about one artifact, and why."""

    state: str  # missing | partial | stale | complete
    reason: str = ""
    #: inputs whose fingerprint differs from the recorded one (or that are not current)
    stale_inputs: list[str] = field(default_factory=list)
    #: parameters whose value differs from the recorded one
    changed: list[str] = field(default_factory=list)


#: Settings a record holds only when they are not at their default (``runtime.precision_params``),
#: so that what was made before the setting existed stays current: a record without the key was
#: made at the default. Judged whenever ``params`` are given, even without the key: turning such
#: a setting back off makes what was made with it stale.
RECORDED_WHEN_SET: dict[str, object] = {"cpu_amp": False}


def judge(record: dict[str, Any] | None, params: Mapping[str, object] | None,
          inputs: Mapping[str, str | None] | None, *, project: ProjectPaths | None = None,
          store: RecordStore | None = None, interrupted: bool = False,
          input_words: dict[str, str] | None = None) -> Verdict:
    """The one staleness decision: ``grappa run`` and ``grappa status`` (through the planner) and every
    stage's own guard (directly, or through ``Store.state``) ask it whether an artifact is to be made.

    ``params`` and ``inputs`` are what the stage would record today: each given parameter is
    compared with the recorded value (and each of :data:`RECORDED_WHEN_SET` with its default when
    not given), each given input's fingerprint (``None``: the input is not
    current) with the recorded one. With ``project``, an input recorded by the artifact that has
    changed since is stale too (transitively through :func:`stale_inputs`).

    * no record: ``missing``, or ``partial`` when ``interrupted`` work exists beside it;
    * a differing parameter or input: ``stale``, also for an unfinished record (work begun with
      other settings is redone, never resumed);
    * an unfinished record: ``partial`` (the rerun resumes it);
    * otherwise ``complete``.
    """
    if record is None:
        return Verdict("partial", "interrupted; the rerun resumes it") if interrupted else Verdict("missing",
                                                                                                   "not made yet")
    recorded_inputs = record.get("inputs") or {}
    recorded_params = record.get("params") or {}
    stale = [i for i, fp in (inputs or {}).items() if fp is None or recorded_inputs.get(i) != fp]
    if project is not None and record.get("complete"):
        stale += [i for i in stale_inputs(project, record, store) if i not in stale]
    changed = [key for key, value in (params or {}).items() if recorded_params.get(key) != value]
    if params is not None:
        changed += [key for key, default in RECORDED_WHEN_SET.items()
                    if key not in params and recorded_params.get(key, default) != default]
    if stale or changed:
        words = input_words or {}
        why = [words.get(i, f"{i} is not current" if (inputs or {}).get(i, "") is None else f"{i} changed")
               for i in stale]
        why += [f"setting {key} changed" for key in changed]
        return Verdict("stale", "; ".join(why), stale, changed)
    if not record.get("complete"):
        return Verdict("partial", "interrupted; the rerun resumes it")
    return Verdict("complete")


def checkpoint_path(project: ProjectPaths, artifact_id: str) -> Path:
    """``adaptors/k256`` -> ``<project>/checkpoints/adaptors/k256.safetensors``."""
    return project.checkpoints / f"{artifact_id}.safetensors"


def result_path(project: ProjectPaths, artifact_id: str) -> Path:
    """``results/backbone/cub`` -> ``<project>/results/backbone/cub.json``."""
    return project.root / f"{artifact_id}.json"


#: (path, size, mtime_ns) -> digest: a file is hashed once per process while it is unchanged
_DIGESTS: dict[tuple[str, int, int], str] = {}


def checkpoint_digest(project: ProjectPaths, artifact_id: str) -> str | None:
    """SHA-256 (16 hex digits) of a checkpoint file's bytes, or None when the file does not exist.

    Changes whenever a training rewrites the weights, even with the same settings (and so the
    same fingerprint); adaptor and fusion files are a few MB, so hashing them costs milliseconds.
    """
    path = checkpoint_path(project, artifact_id)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()[:16]
    return _DIGESTS[key]


def read_checkpoint_record(path: Path) -> dict[str, Any] | None:
    """The provenance stored in a safetensors file's metadata (no tensors are read)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except Exception:
        return None
    raw = meta.get("grappa")
    return json.loads(raw) if raw else None


def record(project: ProjectPaths, artifact_id: str, store: RecordStore | None = None) -> dict[str, Any] | None:
    """The provenance record of an artifact, or None when it does not exist."""
    if artifact_id.startswith(STORE_PREFIXES):
        if store is None:
            if not project.store_path.exists():
                return None
            store = project.store(mode="r")
        return store.provenance(artifact_id)
    if artifact_id.startswith(("adaptors/", "fusion/")):
        return read_checkpoint_record(checkpoint_path(project, artifact_id))
    if artifact_id.startswith("results/"):
        path = result_path(project, artifact_id)
        if not path.is_file():
            return None
        return json.loads(path.read_text()).get("provenance")
    raise ValueError(f"unknown artifact id {artifact_id!r}")


def fingerprint(project: ProjectPaths, artifact_id: str, store: RecordStore | None = None) -> str | None:
    """The current fingerprint of a complete artifact (None if missing or partial)."""
    rec = record(project, artifact_id, store)
    if not rec or not rec.get("complete"):
        return None
    return rec.get("fingerprint")


def stale_inputs(project: ProjectPaths, rec: dict[str, Any], store: RecordStore | None = None) -> list[str]:
    """Input artifacts of ``rec`` whose current fingerprint differs from the recorded one."""
    stale = []
    for input_id, recorded in (rec.get("inputs") or {}).items():
        if not input_id.startswith((*STORE_PREFIXES, "adaptors/", "fusion/", "results/")):
            continue
        if not input_matches(project, input_id, recorded, store):
            stale.append(input_id)
    return stale


def input_matches(project: ProjectPaths, input_id: str, recorded: str | None, store: RecordStore | None = None) -> bool:
    """Whether an input recorded at fingerprint ``recorded`` is still what it was.

    The training features only grow in an incremental update: what was made from an earlier
    increment of them stays valid (:func:`grappa_cli.records.increments.accepts`).
    """
    if input_id == "features/train":
        from grappa_cli.records import increments

        return increments.accepts(record(project, input_id, store), recorded)
    return fingerprint(project, input_id, store) == recorded
