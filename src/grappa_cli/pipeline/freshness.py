"""Whether an input a stage is about to consume is complete and current, transitively.

Every stage calls :func:`require_current` on its inputs before it trains or scores: a stale or
partial input is refused with the command that remakes it. It reads only provenance records
(:mod:`grappa_cli.records.artifacts`) and the configured image lists, so it sits below the stages and
the planner, which both use it.
"""

from __future__ import annotations

from collections.abc import Mapping

from grappa_cli.errors import StoreError
from grappa_cli.project import Project
from grappa_cli.records import artifacts


def require_current(project: Project, artifact_id: str, what: str) -> dict[str, object]:
    """The record of an input a stage is about to consume, if it is complete and current.

    Otherwise a one-line error that names what is wrong with it and the command to run
    first: a stage never trains or scores on stale or partial inputs, ``--force`` included.
    Current means, transitively: every input it recorded still has the recorded
    fingerprint and is itself current, down to the image lists of the features.
    """
    rec = artifacts.record(project, artifact_id)
    if rec is None or not rec.get("complete"):
        state = "is incomplete" if rec else "does not exist yet"
        raise StoreError(f"{what} ({artifact_id}) {state}", hint=f"run `{_maker(artifact_id)}` first")
    problem = _not_current(project, artifact_id, rec, {})
    if problem:
        culprit, why = problem
        then = "" if culprit == artifact_id else " and what depends on it"
        raise StoreError(f"{what} ({artifact_id}) is stale: {why}",
                         hint=f"run `{_maker(culprit)}`{then}, or `grappa run` for everything")
    return rec


def _not_current(project: Project, artifact_id: str, rec: Mapping[str, object],
                 seen: dict[str, tuple[str, str] | None]) -> tuple[str, str] | None:
    """(the first artifact to redo, why) when ``artifact_id`` is not current, else None."""
    if artifact_id in seen:
        return seen[artifact_id]
    seen[artifact_id] = None
    result: tuple[str, str] | None = None
    if artifact_id.startswith("features/"):
        result = _root_changed(project, artifact_id, rec)
    for input_id, recorded in record_fields(rec, "inputs").items():
        if result or not input_id.startswith((*artifacts.STORE_PREFIXES, "adaptors/", "fusion/")):
            continue
        current = artifacts.record(project, input_id)
        grown = input_id == "features/train" and artifacts.input_matches(
            project, input_id, recorded if isinstance(recorded, str) else None)
        if not grown and (not current or not current.get("complete")):
            result = (input_id, f"its input {input_id} is {'incomplete' if current else 'missing'}")
            continue
        assert current is not None  # grown needs a record: increments.accepts is False without one
        if not grown and current.get("fingerprint") != recorded:  # the input was redone: redo this one
            result = (artifact_id, f"{input_id} changed since it was made")
        else:
            result = _not_current(project, input_id, current, seen)
    seen[artifact_id] = result
    return result


def _root_changed(project: Project, key: str, rec: Mapping[str, object]) -> tuple[str, str] | None:
    """Whether the images (or the backbone's name) behind a features group changed."""
    from grappa_cli.data import sources
    from grappa_cli.errors import GrappaError

    config = project.config()
    recorded = record_fields(rec, "inputs")
    made_with = str(record_fields(rec, "params").get("backbone", ""))
    if "@" in made_with and made_with.split("@", 1)[0] != config.backbone.name:
        return key, f"{key} was extracted with another backbone ({made_with.split('@', 1)[0]})"
    if "images" not in recorded:
        return None
    try:
        images = (sources.training_set(config) if key == "features/train"
                  else sources.test_set(config, key.rsplit("/", 1)[1]))
    except GrappaError:
        return None  # the configuration no longer lists these images: extract says why
    if images.fingerprint() != recorded["images"]:
        return key, f"the images of {key} changed since it was extracted"
    return None


def record_fields(record: Mapping[str, object] | None, key: str) -> dict[str, object]:
    """``record[key]`` when it is a JSON object (a record's ``inputs``, ``params``, ``summary``), else ``{}``."""
    value = (record or {}).get(key)
    return value if isinstance(value, dict) else {}


def _maker(artifact_id: str) -> str:
    if artifact_id.startswith("features/"):
        return "grappa extract"
    if artifact_id.startswith("clusters/k"):
        return f"grappa cluster --k {artifact_id.split('/k', 1)[1]} --force"
    if artifact_id.startswith("adaptors/k"):
        return f"grappa adapt --k {artifact_id.split('/k', 1)[1]} --force"
    if artifact_id.startswith("fusion/"):
        return f"grappa fuse --strategy {artifact_id.split('/', 1)[1]} --force"
    return "grappa run"
