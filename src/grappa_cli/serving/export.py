"""``grappa export``: one of the project's models as a stand-alone file, safetensors or ONNX.

The format comes from the file's extension (``.safetensors``, ``.onnx``) or ``--format``; any
other extension is an error, never a silent safetensors file under another name.

* safetensors: the backbone's weights (unless ``--no-backbone``), the adaptor sets and fusion
  layers, the backbone's build spec and timm data config, and a provenance record: which
  project artifacts the model came from with their fingerprints and records, and the package
  versions. :func:`grappa_cli.load_model` reads it without the project.
* ONNX: the whole embedding graph (:mod:`grappa_cli.model.onnx_export`), with the
  preprocessing and the model's identity in its metadata; onnxruntime runs it without grappa.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from grappa_cli.errors import GrappaError
from grappa_cli.project import Project
from grappa_cli.records import artifacts
from grappa_cli.records import provenance as prov

if TYPE_CHECKING:
    from grappa_cli.model.grappa import GrappaModel
    from grappa_cli.pipeline.stages.models import ModelRef


@dataclass
class ExportResult:
    path: str
    model: str
    model_id: str
    includes_backbone: bool
    num_sets: int
    fusion: str
    embed_dim: int
    bytes: int
    sha256: str
    inputs: dict[str, str] = field(default_factory=dict)
    format: str = "safetensors"


FORMATS = {".safetensors": "safetensors", ".onnx": "onnx"}


def output_format(output: Path, requested: str | None = None) -> str:
    """``safetensors`` or ``onnx``: ``requested``, else from ``output``'s extension (else an error)."""
    if requested:
        if requested not in FORMATS.values():
            raise GrappaError(f"unknown export format {requested!r}", hint="use --format safetensors or onnx")
        return requested
    found = FORMATS.get(Path(output).suffix.lower())
    if found is None:
        raise GrappaError(f"cannot tell the format of {Path(output).name} from its extension",
                          hint="name the file .safetensors or .onnx, or pass --format safetensors|onnx")
    return found


def check_output(output: Path, force: bool) -> Path:
    """The resolved output path; refuses a directory, or an existing file without ``force``."""
    output = Path(output).expanduser().resolve()
    if output.is_dir():
        raise GrappaError(f"{output} is a directory", hint="name the file to write, e.g. model.safetensors")
    if output.exists() and not force:
        raise GrappaError(f"{output} already exists", hint="pass --force to overwrite it, or choose another name")
    return output


def export_model(project: Project, model_name: str, output: Path, *, include_backbone: bool = True,
                 force: bool = False, fmt: str | None = None) -> ExportResult:
    """Write the model ``model_name`` (``backbone``, ``adaptor:k<K>``, ``fused:<strategy>``) to ``output``.

    ``fmt``: ``safetensors`` or ``onnx`` (default: from the extension, :func:`output_format`).
    """
    from grappa_cli.model.backbones.backbone import build_backbone, resolve_provider
    from grappa_cli.model.export import write_model_file
    from grappa_cli.pipeline.stages import models
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.storage.fsutil import sha256_file

    ref = models.parse(model_name)
    fmt = output_format(output, fmt)
    if fmt == "onnx":
        from grappa_cli.model.onnx_export import require_onnx

        require_onnx()  # before building anything
    output = check_output(output, force)
    config = project.config()
    spec = backbone_spec(config)
    backbone = build_backbone(spec)
    model = models.load(project, ref, backbone)
    inputs = models.inputs(project, ref)
    sources = {a: rec for a in inputs if (rec := artifacts.record(project, a)) is not None}
    params = {"model": ref.name, "backbone": backbone.model_id, "include_backbone": include_backbone,
              "model_fingerprint": models.fingerprint(project, ref, backbone)}
    record = prov.record("export", params, inputs, project=str(project.root), sources=sources,
                         backbone_spec=spec.to_dict())
    record.update(complete=True, completed=prov.now())
    provider = resolve_provider(spec).name
    if fmt == "onnx":
        _write_onnx(project, ref, model, output, record)
    else:
        write_model_file(output, model, model_name=ref.name, backbone_spec=spec, include_backbone=include_backbone,
                         provenance=record, extra={"project": str(project.root), "provider": provider})
    return ExportResult(str(output), ref.name, backbone.model_id, include_backbone, model.num_sets,
                        model.fusion_kind or "", backbone.embed_dim, output.stat().st_size, sha256_file(output),
                        inputs, fmt)


def _write_onnx(project: Project, ref: ModelRef, model: GrappaModel, output: Path, record: dict) -> None:
    """The ONNX graph of ``model`` with its identity: backbone, sets, strategy, strength, digests."""
    import grappa_cli
    from grappa_cli.model.backbones.backbone import weights_digest
    from grappa_cli.model.onnx_export import write_onnx
    from grappa_cli.pipeline.stages import models

    rec = models.record(project, ref) or {}
    identity = {"name": ref.name, "backbone": model.backbone.model_id, "sets": (rec.get("params") or {}).get("sets")
                or ([ref.name.partition(":")[2]] if ref.name.startswith("adaptor:") else []),
                "fusion": model.fusion_kind or "", "strategy": ref.name.partition(":")[2]
                if ref.name.startswith("fused:") else "", "strength": model.strength,
                "embed_dim": model.backbone.embed_dim, "layers_digest": weights_digest(model.layers),
                "grappa": grappa_cli.__version__}
    write_onnx(output, model, identity=identity, provenance=record)
