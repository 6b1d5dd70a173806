"""Provenance records: what produced an artifact, from which inputs, with which versions.

Every stage writes its data first and its provenance record last; the record's
``complete`` flag is what tells finished work from interrupted work, and its
``fingerprint`` (a hash of parameters and input fingerprints) is what tells whether an
artifact was made from the inputs now configured.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from importlib import metadata
from typing import Any

_PACKAGES = ("grappa-cli", "torch", "timm", "faiss-cpu", "zarr", "numpy", "scikit-learn")


def fingerprint(obj: object) -> str:
    """A short stable hash of a JSON-serialisable object (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results (read from metadata; nothing is imported)."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def compute_conditions() -> dict[str, int | str | None]:
    """What, besides the inputs and versions, a result's last digits depend on: torch's intra-op
    thread count (the order of floating-point reductions on the CPU) and the processor's kind.

    Read without importing torch (``None`` when this process has not loaded it).
    """
    import platform
    import sys

    torch = sys.modules.get("torch")
    return {"threads": int(torch.get_num_threads()) if torch is not None else None, "machine": platform.machine()}


def record(stage: str, params: Mapping[str, object], inputs: Mapping[str, str | None],
           **extra: object) -> dict[str, Any]:
    """A fresh provenance record for ``stage`` (``complete`` is False until the stage ends)."""
    return {
        "stage": stage,
        "complete": False,
        "params": params,
        "inputs": inputs,
        "fingerprint": fingerprint({"params": params, "inputs": inputs}),
        "versions": package_versions(),
        "compute": compute_conditions(),
        "created": now(),
        **extra,
    }


def describe_mismatch(old: dict[str, Any], params: Mapping[str, object], inputs: Mapping[str, str | None]) -> str:
    """Human words for what differs between a stored record and the current request."""
    diffs = []
    for key in sorted(set(old.get("inputs", {})) | set(inputs)):
        if old.get("inputs", {}).get(key) != inputs.get(key):
            diffs.append(f"input {key}")
    for key in sorted(set(old.get("params", {})) | set(params)):
        if old.get("params", {}).get(key) != params.get(key):
            diffs.append(f"{key} ({old.get('params', {}).get(key)!r} -> {params.get(key)!r})")
    return ", ".join(diffs) if diffs else "its fingerprint"
