"""Stand-alone model files: one safetensors file that embeds images without the project.

``grappa export`` writes a whole-model bundle (:mod:`grappa_cli.model.bundle`) that also
holds the backbone's weights, its build spec and its timm data config. :func:`load_model`
reads it back with no project directory and no network:

1. rebuild the backbone's architecture from the stored spec with ``pretrained = false``
   (same provider, same timm kwargs; for packaged weights such as ``efficientnet_lite0``, the
   timm architecture those weights belong to): nothing is downloaded;
2. copy the stored backbone weights into it and recompute its ``model_id`` from them: it must
   equal the recorded one, so a modified or corrupted file fails loudly instead of embedding
   with the wrong weights;
3. rebuild the adaptor banks and fusion layers, load their tensors and check them against
   the digest recorded at export (``extra["layers_digest"]``);
4. build the evaluation transform from the stored data config.

Files exported with ``--no-backbone`` hold everything but the backbone's weights; they are
loaded with ``backbone_weights=FILE`` or ``rebuild_backbone=True`` (see :func:`load_model`),
and the same ``model_id`` check applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from grappa_cli.errors import GrappaError
from grappa_cli.model.backbones.backbone import Backbone, BackboneSpec, build_backbone, weights_digest
from grappa_cli.model.grappa import GrappaModel

if TYPE_CHECKING:  # annotations only
    from PIL import Image

#: ``extra["kind"]`` of files written by ``grappa export`` (``grappa fuse`` bundles have none).
EXPORT_KIND = "grappa-export"


class EmbeddingModel(nn.Module):
    """A ``GrappaModel`` as a retrieval feature extractor: images ``[B, 3, H, W]`` -> unit vectors.

    What both ``grappa index`` (on a project's model) and :func:`load_model` (on an exported
    file) run, so the two give the same embeddings for the same images.
    """

    def __init__(self, model: GrappaModel, *, name: str = "", metadata: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.metadata = dict(metadata or {})
        model.set_trainable(adaptors=False, fusion=False)
        self.eval()

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone

    @property
    def embed_dim(self) -> int:
        """Width D of the embeddings."""
        return self.model.backbone.embed_dim

    @property
    def data_config(self) -> dict[str, Any]:
        """The timm data config preprocessing must follow."""
        return self.model.backbone.data_config

    @property
    def model_id(self) -> str:
        """The backbone's identity (name @ weights hash)."""
        return self.model.backbone.model_id

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(images), dim=-1)


def write_model_file(
    path: Path, model: GrappaModel, *, model_name: str, backbone_spec: BackboneSpec,
    include_backbone: bool = True, provenance: Mapping[str, object] | None = None,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Write ``model`` as a stand-alone file (atomically: a temporary sibling, then a rename)."""
    from grappa_cli.model.bundle import save_bundle

    info = {"kind": EXPORT_KIND, "model_name": model_name, "layers_digest": weights_digest(model.layers),
            **(extra or {})}
    save_bundle(Path(path), model, backbone_spec=backbone_spec.to_dict(), include_backbone=include_backbone,
                provenance=provenance, extra=info)


def data_config_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The stored timm data config, with JSON lists turned back into tuples."""
    config = dict(meta.get("data_config") or {})
    if "input_size" not in config:
        raise GrappaError("the model file stores no preprocessing config (data_config)",
                          hint="export the model again with this version of grappa")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    from grappa_cli.runtime import resolve_device

    return resolve_device(str(device))


def _stored_spec(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    spec = meta.get("backbone_spec") or {}
    if not spec.get("name"):
        raise GrappaError(f"{path} does not record how its backbone was built (no backbone_spec)",
                          hint="export the model again with `grappa export`")
    return spec


def _provider(stored: dict[str, Any], built_by: str | None) -> str:
    """The configured provider; for ``auto``, the one that built the exported backbone if installed."""
    configured = stored.get("provider") or "auto"
    if configured != "auto" or not built_by:
        return configured
    from grappa_cli import plugins

    return built_by if built_by in plugins.registry("backbones").items else "auto"


def _architecture(stored: dict[str, Any]) -> str:
    """The timm model the project built for ``stored``: for packaged weights, their architecture.

    ``efficientnet_lite0`` with its packaged weights is timm's ``tf_efficientnet_lite0`` (TF
    "same" padding); built from a plain weights file it would be timm's ``efficientnet_lite0``,
    which holds tensors of the same shapes but pads differently, so its embeddings differ.
    """
    from grappa_cli.model.backbones.packaged import packaged_weights

    packaged = packaged_weights(stored["name"])
    if packaged is not None and stored.get("pretrained", True) and not stored.get("weights"):
        return packaged.architecture
    return str(stored["name"])


def _build(path: Path, stored: dict[str, Any], *, pretrained: bool, weights: Path | None,
           built_by: str | None = None, architecture: str | None = None) -> Backbone:
    """Build the stored spec; ``architecture`` builds that timm model under the stored name."""
    spec = BackboneSpec(name=architecture or stored["name"], provider=_provider(stored, built_by),
                        pretrained=pretrained, weights=weights, kwargs=dict(stored.get("kwargs") or {}),
                        config_path=path)
    backbone = build_backbone(spec)
    backbone.name = str(stored["name"])  # the identity (model_id) is "<stored name>@<weights hash>"
    return backbone


def _check_identity(path: Path, recorded: str, actual: str, source: str) -> None:
    if actual != recorded:
        raise GrappaError(
            f"{source} do not match the identity {path.name} records (model_id {recorded}, the weights hash "
            f"to {actual}): the weights were modified or are not the ones the model was trained with",
            hint="export the model again from its project, or pass the backbone weights it was trained on",
        )


def load_backbone(
    path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor], *,
    backbone_weights: str | Path | None = None, rebuild_backbone: bool = False,
) -> Backbone:
    """The verified backbone of a model file (see :func:`load_model` for the three sources)."""
    from grappa_cli.model.bundle import load_backbone_state

    stored = _stored_spec(path, meta)
    recorded = meta["model_id"]
    built_by = (meta.get("extra") or {}).get("provider")
    if backbone_weights is not None:
        weights = Path(backbone_weights).expanduser().resolve()
        backbone = _build(path, stored, pretrained=True, weights=weights, built_by=built_by,
                          architecture=_architecture(stored))
        actual = backbone.current_model_id()
        _check_identity(path, recorded, actual, f"the backbone weights {weights}")
        backbone.model_id = actual
        return backbone
    if rebuild_backbone:
        stored_weights = Path(stored["weights"]) if stored.get("weights") else None
        backbone = _build(path, stored, pretrained=bool(stored.get("pretrained", True)), weights=stored_weights,
                          built_by=built_by)
        _check_identity(path, recorded, backbone.model_id, f"the rebuilt backbone {stored['name']!r}")
        return backbone
    if not meta.get("includes_backbone"):
        raise GrappaError(
            f"{path} holds no backbone weights (it was exported with --no-backbone)",
            hint=f"pass backbone_weights=FILE (the weights of {stored['name']!r} the model was trained on) or "
                 "rebuild_backbone=True to build the backbone as its project did (timm hub cache or network), "
                 "or export it again without --no-backbone",
        )
    backbone = _build(path, stored, pretrained=False, weights=None, built_by=built_by,
                      architecture=_architecture(stored))
    load_backbone_state(path, backbone, tensors)
    actual = backbone.current_model_id()
    _check_identity(path, recorded, actual, "the backbone weights stored in the file")
    backbone.model_id = actual
    return backbone


def load_model(
    path: str | Path, device: str | torch.device | None = None, *, backbone_weights: str | Path | None = None,
    rebuild_backbone: bool = False,
) -> tuple[EmbeddingModel, Callable[[Image.Image], torch.Tensor]]:
    """Load a file written by ``grappa export``: ``(model, transform)``.

    ``model`` maps a batch of preprocessed images ``[B, 3, H, W]`` to L2-normalised embeddings
    ``[B, D]`` (eval mode, no gradients needed); ``transform`` maps a PIL image to the
    ``[3, H, W]`` tensor the model expects (resize, centre crop, normalise, from the stored
    timm data config). No project directory and no network are needed.

    Args:
        path: the ``.safetensors`` file.
        device: ``None`` (CPU), ``"auto"``, ``"cpu"``, ``"cuda:0"`` or a ``torch.device``.
        backbone_weights: a weights file (safetensors or a plain torch state dict) for the
            backbone, needed for files exported with ``--no-backbone``; it overrides the
            weights stored in the file.
        rebuild_backbone: build the backbone as the project did (timm's hub or local cache
            for pretrained weights, the seeded random weights for ``pretrained = false``),
            for files exported with ``--no-backbone``.

    Whatever the source, the backbone weights must hash to the ``model_id`` the file
    records, or a :class:`~grappa_cli.errors.GrappaError` says they differ.
    """
    from safetensors.torch import load_file

    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model.bundle import load_layers, read_bundle_metadata

    path = Path(path).expanduser()
    meta = read_bundle_metadata(path)
    data_config = data_config_of(meta)
    tensors = load_file(str(path), device="cpu")
    backbone = load_backbone(path, meta, tensors, backbone_weights=backbone_weights,
                             rebuild_backbone=rebuild_backbone)
    backbone.data_config = dict(data_config)
    model, _ = load_layers(path, backbone, tensors)
    extra = meta.get("extra") or {}
    if extra.get("layers_digest") and weights_digest(model.layers) != extra["layers_digest"]:
        raise GrappaError(f"the adaptor and fusion weights in {path} do not match the digest it records: "
                          "the file was modified or corrupted", hint="export the model again from its project")
    embedder = EmbeddingModel(model, name=str(extra.get("model_name", "")), metadata=meta)
    return embedder.to(_resolve_device(device)).eval(), eval_transform(data_config)
