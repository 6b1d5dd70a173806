"""``grappa export``: one of the project's models as a stand-alone safetensors file.

The file holds the backbone's weights (unless ``--no-backbone``), the adaptor sets and
fusion layers, the backbone's build spec and timm data config, and a provenance record:
which project artifacts the model came from with their fingerprints and records, and the
package versions. :func:`grappa_cli.load_model` reads it without the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from grappa_cli import artifacts
from grappa_cli import provenance as prov
from grappa_cli.errors import GrappaError
from grappa_cli.project import Project


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


def check_output(output: Path, force: bool) -> Path:
    """The resolved output path; refuses a directory, or an existing file without ``force``."""
    output = Path(output).expanduser().resolve()
    if output.is_dir():
        raise GrappaError(f"{output} is a directory", hint="name the file to write, e.g. model.safetensors")
    if output.exists() and not force:
        raise GrappaError(f"{output} already exists", hint="pass --force to overwrite it, or choose another name")
    return output


def export_model(project: Project, model_name: str, output: Path, *, include_backbone: bool = True,
                 force: bool = False) -> ExportResult:
    """Write the model ``model_name`` (``backbone``, ``adaptor:k<K>``, ``fused:<strategy>``) to ``output``."""
    from grappa_cli.fsutil import sha256_file
    from grappa_cli.model.backbone import build_backbone, resolve_provider
    from grappa_cli.model.export import write_model_file
    from grappa_cli.stages import models
    from grappa_cli.stages.extract import backbone_spec

    ref = models.parse(model_name)
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
    write_model_file(output, model, model_name=ref.name, backbone_spec=spec, include_backbone=include_backbone,
                     provenance=record, extra={"project": str(project.root), "provider": provider})
    return ExportResult(str(output), ref.name, backbone.model_id, include_backbone, model.num_sets,
                        model.fusion_kind or "", backbone.embed_dim, output.stat().st_size, sha256_file(output),
                        inputs)
