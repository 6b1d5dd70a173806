"""A project model as an ONNX graph: preprocessed images in, L2-normalised embeddings out.

Serving stacks and vector databases run ONNX without grappa or torch. The graph is what
:class:`~grappa_cli.model.export.EmbeddingModel` computes (backbone, adaptors, fusion at the
saved strength, then the L2 normalisation), traced by ``torch.onnx.export`` with a dynamic
batch axis. What a user needs to feed it right, and to know what it is, goes into the file's
``metadata_props`` (strings; JSON where structured):

    grappa.format           "grappa-onnx" (version 1)
    grappa.preprocessing    JSON: input_size, interpolation, mean, std, crop_pct, crop_mode
    grappa.model            JSON: name, backbone (model_id), sets, fusion, strategy, strength,
                            embed_dim, layers_digest, grappa version
    grappa.provenance       JSON: the export's provenance record

``onnx`` (to write the metadata) is the optional extra ``onnx``; ``onnxruntime`` runs the file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from grappa_cli.errors import GrappaError

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    from grappa_cli.model.grappa import GrappaModel

FORMAT = "grappa-onnx"
FORMAT_VERSION = "1"
OPSET = 17
INPUT = "images"
OUTPUT = "embedding"
_PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def require_onnx() -> ModuleType:
    """The ``onnx`` module, or one clear error saying which extra installs it."""
    try:
        import onnx
    except ImportError:
        raise GrappaError("ONNX export needs the onnx package",
                          hint="pip install 'grappa-cli[onnx]' (or: pip install onnx onnxruntime)") from None
    return onnx


def preprocessing(data_config: Mapping[str, object]) -> dict[str, object]:
    """The timm data config keys that preprocessing must follow, as plain JSON values."""
    out: dict[str, object] = {}
    for key in _PREPROCESSING_KEYS:
        value = data_config.get(key)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def write_onnx(path: Path, model: GrappaModel, *, identity: Mapping[str, object],
               provenance: Mapping[str, object] | None = None,
               opset: int = OPSET) -> None:
    """Write ``model`` (a ``GrappaModel``) as an ONNX graph with its metadata, atomically.

    ``identity`` is the ``grappa.model`` record (name, backbone, sets, strategy, ...).
    """
    import torch

    from grappa_cli.model.export import EmbeddingModel
    from grappa_cli.storage.fsutil import atomic_write_with

    onnx = require_onnx()
    embedder = EmbeddingModel(model).to("cpu").eval()
    data_config = model.backbone.data_config
    channels, height, width = (int(v) for v in data_config["input_size"])
    example = torch.zeros(2, channels, height, width)
    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on Python control flow fixed at export and the exporter's own notices
            warnings.simplefilter("ignore")
            torch.onnx.export(embedder, (example,), str(tmp), dynamo=False, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True)
        graph = onnx.load(str(tmp))
        metadata = {"grappa.format": FORMAT, "grappa.format_version": FORMAT_VERSION,
                    "grappa.preprocessing": json.dumps(preprocessing(data_config), sort_keys=True),
                    "grappa.model": json.dumps(identity, sort_keys=True, default=str),
                    "grappa.provenance": json.dumps(provenance or {}, sort_keys=True, default=str)}
        del graph.metadata_props[:]
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        graph.doc_string = f"grappa {identity.get('name', '')}: images [batch, 3, H, W] -> L2-normalised embedding"
        onnx.save(graph, str(tmp))

    atomic_write_with(Path(path), write)


def read_onnx_metadata(path: Path) -> dict[str, object]:
    """The ``grappa.*`` metadata of an exported ONNX file, JSON fields decoded."""
    onnx = require_onnx()
    graph = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in graph.metadata_props}
    if props.get("grappa.format") != FORMAT:
        raise GrappaError(f"{path} is not an ONNX file written by `grappa export`",
                          hint="export the model again with `grappa export MODEL FILE.onnx`")
    return {key.removeprefix("grappa."): (json.loads(value) if key != "grappa.format" and value[:1] in "[{"
                                          else value) for key, value in props.items()}
