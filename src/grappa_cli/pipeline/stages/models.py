"""Named models of a project: ``backbone``, ``adaptor:k<K>``, ``fused:<strategy>``.

These are the rows of the paper's Table 2: M, M + P_i and the fused models M* (plus the
baselines stored as fusion strategies). Every command that takes ``--model`` resolves the
name here into a ``GrappaModel`` on the configured backbone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grappa_cli.errors import StoreError, UsageError
from grappa_cli.pipeline.freshness import record_fields
from grappa_cli.project import Project
from grappa_cli.records import artifacts, increments
from grappa_cli.suggest import did_you_mean

if TYPE_CHECKING:
    from grappa_cli.model.backbones.backbone import Backbone
    from grappa_cli.model.grappa import GrappaModel


@dataclass(frozen=True)
class ModelRef:
    """A parsed model name and the artifact it comes from (None for the backbone)."""

    name: str
    kind: str  # backbone | adaptor | fused
    artifact: str | None

    @property
    def dirname(self) -> str:
        """Directory-safe form used under ``results/`` and ``store.zarr/eval/``."""
        return self.name.replace(":", "-")


def parse(name: str) -> ModelRef:
    """``backbone``, ``adaptor:k256`` (``adaptor:k16-coral``: a set of added images) or ``fused:neighbor``.

    Also accepted: ``k256`` (an adaptor set as ``--k`` names it) and the directory forms
    ``adaptor-k256`` / ``fused-neighbor`` used under ``results/``.
    """
    name = name.strip()
    if name in ("backbone", "M", "dino"):
        return ModelRef("backbone", "backbone", None)
    if increments.is_set_name(name[:1].lower() + name[1:]):
        name = f"adaptor:{name[:1].lower()}{name[1:]}"
    for kind in ("adaptor", "fused"):
        if name.startswith(f"{kind}-"):
            name = f"{kind}:{name[len(kind) + 1:]}"
    kind, _, rest = name.partition(":")
    if kind == "adaptor" and rest:
        rest = rest if rest.startswith("k") else f"k{rest}"
        return ModelRef(f"adaptor:{rest}", "adaptor", f"adaptors/{rest}")
    if kind == "fused" and rest:
        return ModelRef(f"fused:{rest}", "fused", f"fusion/{rest}")
    raise UsageError(f"unknown model name {name!r}",
                     hint="use backbone, adaptor:k<K> (e.g. adaptor:k1024) or fused:<strategy> (e.g. fused:neighbor)")




def available(project: Project) -> list[ModelRef]:
    """Every model the project can build now: the backbone, each adaptor set, each fused model."""
    refs = [ModelRef("backbone", "backbone", None)]
    sets = sorted((p.stem for p in project.adaptors_dir.glob("*.safetensors")), key=increments.set_sort_key)
    refs += [parse(f"adaptor:{s}") for s in sets]
    refs += [parse(f"fused:{p.stem}") for p in sorted(project.fusion_dir.glob("*.safetensors"))]
    return [r for r in refs if r.artifact is None or artifacts.fingerprint(project, r.artifact) is not None]


def record(project: Project, ref: ModelRef) -> dict[str, Any] | None:
    """The record of the model's artifact, as :func:`grappa_cli.records.artifacts.record` reads it."""
    return artifacts.record(project, ref.artifact) if ref.artifact else None


def load(project: Project, ref: ModelRef, backbone: Backbone) -> GrappaModel:
    """The ``GrappaModel`` named by ``ref`` on ``backbone`` (which must match its files)."""
    from grappa_cli.model.checkpoint import load_adaptor_set, load_fusion, read_metadata
    from grappa_cli.model.grappa import GrappaModel

    if ref.kind == "backbone":
        return GrappaModel.backbone_only(backbone)
    assert ref.artifact is not None  # only the backbone has no artifact (see parse)
    path = artifacts.checkpoint_path(project, ref.artifact)
    if not path.is_file():
        names = [r.name for r in available(project)]
        raise StoreError(f"no model {ref.name!r} in this project{did_you_mean(ref.name, names)}; "
                         f"available: {', '.join(names)}",
                         hint="train it first (`grappa adapt` / `grappa fuse`)")
    if ref.kind == "adaptor":
        return GrappaModel.with_adaptor_sets(backbone, [load_adaptor_set(path, backbone)], fusion=None)
    meta = read_metadata(path)
    if meta.get("format") == "grappa-model":
        from grappa_cli.model.bundle import load_layers

        return load_layers(path, backbone)[0]
    names = meta.get("adaptor_sets") or []
    if isinstance(names, str):
        names = json.loads(names)
    set_paths = [project.adaptors_dir / f"{n}.safetensors" for n in names]
    missing = [p.name for p in set_paths if not p.is_file()]
    if missing:
        raise StoreError(f"{path.name} fuses adaptor sets that no longer exist: {', '.join(missing)}",
                         hint=f"rerun `grappa adapt` or `grappa fuse --strategy {ref.name.split(':')[1]} --force`")
    sets = [load_adaptor_set(p, backbone) for p in set_paths]
    fusion = load_fusion(path, backbone, num_sets=len(sets))
    return GrappaModel.with_adaptor_sets(backbone, sets, fusion=fusion.layers, strength=fusion.strength)


def inputs(project: Project, ref: ModelRef) -> dict[str, str]:
    """The artifacts ``ref`` is built from, with their current fingerprints.

    A fused model is its fusion checkpoint plus the adaptor sets it fuses (which may have been
    retrained since the fusion was trained); an adaptor model is its adaptor set; the
    backbone has none (its identity is the backbone's ``model_id``).
    """
    if ref.artifact is None:
        return {}
    current = artifacts.fingerprint(project, ref.artifact)
    if current is None:
        names = [r.name for r in available(project)]
        raise StoreError(f"no model {ref.name!r} in this project{did_you_mean(ref.name, names)}; "
                         f"available: {', '.join(names)}",
                         hint="train it first (`grappa adapt` / `grappa fuse`)")
    found = {ref.artifact: current}
    for input_id in _files(project, ref)[1:]:
        found[input_id] = artifacts.fingerprint(project, input_id) or "missing"
    return found


def _files(project: Project, ref: ModelRef) -> list[str]:
    """The checkpoint artifacts of a trained model: its own, then the adaptor sets it fuses (its record's inputs)."""
    assert ref.artifact is not None
    recorded = record_fields(record(project, ref), "inputs")
    return [ref.artifact, *(i for i in sorted(recorded) if i.startswith("adaptors/"))]


#: The input key under which test embeddings and results record :func:`weights_digest`.
WEIGHTS = "weights"


def weights_digest(project: Project, ref: ModelRef) -> str | None:
    """One digest of the bytes of every file the model is built from; None for the backbone or a missing file.

    A fused model is its fusion checkpoint and the adaptor sets it fuses. Provenance
    fingerprints change with settings and inputs; this changes with the weights themselves, so
    embeddings of a model retrained with the same settings (non-deterministic GPU kernels, a
    ``--force`` retrain after an upgrade) are not mistaken for the old model's.
    """
    from grappa_cli.records import provenance as prov

    if ref.artifact is None:
        return None
    digests = {i: artifacts.checkpoint_digest(project, i) for i in _files(project, ref)}
    if any(d is None for d in digests.values()):
        return None
    return prov.fingerprint(digests)


def fingerprint(project: Project, ref: ModelRef, backbone: Backbone) -> str:
    """What the model computes: changes when its backbone, preprocessing, files' records or bytes change."""
    from grappa_cli.records import provenance as prov

    data_config = {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()}
    return prov.fingerprint({"model": ref.name, "backbone": backbone.model_id, "data_config": data_config,
                             "inputs": inputs(project, ref), WEIGHTS: weights_digest(project, ref)})
