"""``grappa embed``: a folder's (or a task's) embeddings as a file other tools read: Parquet or NumPy.

The images go through the same chunked, resumable embedding as ``grappa index``
(:func:`grappa_cli.pipeline.stages.embed.run_embedding`, store group ``embed/<digest>``): a killed run
resumes, and a rerun with the same images and model rewrites the file without embedding again.
Unreadable files are skipped and listed, as in ``extract``.

* ``.parquet``: one row per readable image, columns ``path`` (relative to the folder; for a task,
  as the task lists it) and ``embedding`` (a fixed-size list of float32, L2-normalised), the
  model's identity in the file's key-value metadata (``grappa.model``): pandas, polars and DuckDB
  read it without grappa. Needs ``pyarrow`` (the ``parquet`` extra).
* ``.npy``: the ``[n, D]`` float32 matrix, with ``<name>.paths.txt`` beside it (one path a line,
  in row order).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from grappa_cli.console import NullReporter, Reporter
from grappa_cli.errors import GrappaError, UsageError
from grappa_cli.project import Project
from grappa_cli.records import provenance as prov

FORMATS = {".parquet": "parquet", ".npy": "npy"}


@dataclass
class EmbedOutResult:
    path: str
    model: str
    images: int
    rows: int
    dim: int
    format: str
    bad: list[dict[str, str]] = field(default_factory=list)
    skipped_embedding: bool = False


def output_format(output: Path) -> str:
    found = FORMATS.get(Path(output).suffix.lower())
    if found is None:
        raise UsageError(f"cannot tell the format of {Path(output).name} from its extension",
                         hint="name the output .parquet or .npy")
    if found == "parquet":
        require_pyarrow()
    return found


def require_pyarrow() -> ModuleType:
    try:
        import pyarrow
    except ImportError:
        raise GrappaError("writing Parquet needs pyarrow",
                          hint="pip install 'grappa-cli[parquet]' (or write .npy instead)") from None
    return pyarrow


def images_of(project: Project, target: str, split: str) -> tuple[list[str], list[str], str]:
    """``(absolute paths, paths as written, what)`` of a folder or of a configured task's split."""
    from grappa_cli.data import sources
    from grappa_cli.serving.gallery import list_images

    config = project.config()
    if target in config.tasks and not Path(target).is_dir():
        task = sources.load_task(config, target)
        part = task.test if split == "test" else task.train
        if part is None or not len(part.paths):
            raise UsageError(f"task {target!r} has no {split} split", hint="pass --split train or test")
        paths = [str(p) for p in part.paths]
        return paths, paths, f"task {target} ({split})"
    root = Path(target).expanduser().resolve()
    paths = list_images(root)
    return paths, [str(Path(p).relative_to(root)) for p in paths], f"folder {root}"


def embed_to_file(project: Project, target: str, output: Path, *, model: str | None = None, split: str = "test",
                  force: bool = False, device: str | None = None, batch_size: int | None = None,
                  num_workers: int | None = None, reporter: Reporter | None = None) -> EmbedOutResult:
    """Embed ``target`` (a folder, or a task's ``split``) with ``model`` and write ``output``."""
    import grappa_cli
    from grappa_cli.data.images import decode_min_side
    from grappa_cli.data.tasks.base import ImageList
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model.backbones.backbone import build_backbone, weights_digest
    from grappa_cli.model.export import EmbeddingModel
    from grappa_cli.pipeline.stages import models
    from grappa_cli.pipeline.stages.embed import EmbedJob, run_embedding
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.runtime import Precision, precision_params, resolve_device
    from grappa_cli.serving.export import check_output
    from grappa_cli.serving.gallery import default_model
    from grappa_cli.storage.fsutil import atomic_write_text

    reporter = reporter or NullReporter()
    fmt = output_format(output)
    output = check_output(output, force)
    paths, shown, what = images_of(project, target, split)
    config = project.config()
    ref = models.parse(model or default_model(project))
    backbone = build_backbone(backbone_spec(config))
    loaded = models.load(project, ref, backbone)
    embedder = EmbeddingModel(loaded, name=ref.name)
    params = {"model": ref.name, "model_fingerprint": models.fingerprint(project, ref, backbone), "dtype": "float32",
              "chunk_size": config.data.chunk_size, **precision_params(config.runtime)}
    inputs = {"images": ImageList(paths).fingerprint(), **models.inputs(project, ref)}
    digest = hashlib.sha256(json.dumps([ref.name, paths], sort_keys=True).encode()).hexdigest()[:16]
    job = EmbedJob(f"embed/{digest}", "embed", paths, None, params, inputs, what)
    store = project.store()
    embedded = run_embedding(
        store, job, embedder, eval_transform(backbone.data_config), dim=backbone.embed_dim, dtype="float32",
        chunk_rows=config.data.chunk_size, batch_size=batch_size or config.data.batch_size,
        num_workers=config.data.num_workers if num_workers is None else num_workers,
        device=resolve_device(device or config.runtime.device), amp=Precision.of(config.runtime),
        min_side=decode_min_side(backbone.data_config), refresh=True, reporter=reporter,
    )
    valid = np.asarray(store.read(f"{job.key}/valid"), dtype=bool)
    vectors = np.asarray(store.read(f"{job.key}/embeddings"), dtype=np.float32)[valid]
    kept = [p for p, ok in zip(shown, valid, strict=True) if ok]
    identity = {"name": ref.name, "backbone": backbone.model_id, "fusion": loaded.fusion_kind or "",
                "strength": loaded.strength, "embed_dim": backbone.embed_dim, "normalised": True,
                "layers_digest": weights_digest(loaded.layers), "grappa": grappa_cli.__version__,
                "source": what, "created": prov.now()}
    if fmt == "parquet":
        _write_parquet(output, kept, vectors, identity)
    else:
        _write_npy(output, vectors)
        atomic_write_text(paths_file(output), "".join(f"{p}\n" for p in kept))
    return EmbedOutResult(str(output), ref.name, len(paths), len(kept), backbone.embed_dim, fmt, embedded.bad,
                          embedded.skipped)


def paths_file(output: Path) -> Path:
    """``x.paths.txt`` beside ``x.npy``."""
    return Path(output).with_suffix(".paths.txt")


def _write_parquet(output: Path, paths: list[str], vectors: np.ndarray, identity: Mapping[str, object]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grappa_cli.storage.fsutil import atomic_write_with

    dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table({"path": pa.array(paths, type=pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})
    table = table.replace_schema_metadata({"grappa.model": json.dumps(identity, sort_keys=True)})
    atomic_write_with(output, lambda tmp: pq.write_table(table, str(tmp)))


def _write_npy(output: Path, vectors: np.ndarray) -> None:
    from grappa_cli.storage.fsutil import atomic_write_with

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))

    atomic_write_with(output, write)
