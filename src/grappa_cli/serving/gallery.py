"""``grappa index``: embed a folder of images with a project model and index it with faiss.

Every image file under the gallery folder (recursively, by extension) is embedded with the
chosen model into the store group ``gallery/<name>`` through :func:`run_embedding`, so the
work is chunked and resumable (a killed run continues where it stopped) and unreadable
files are skipped and listed. The L2-normalised embeddings then go into a faiss index
(:mod:`grappa_cli.serving.vector_index`) saved as ``indexes/<name>.faiss`` next to a JSON sidecar
``indexes/<name>.json`` that says what the index holds: the store group of its paths, the
model's name and fingerprint, the dimension and the index settings. The sidecar is written
last: an index without one is unfinished.

A rebuild (``--force``, or new images) fills the next generation (``gallery/<name>+2``, ...,
with its own faiss file ``<name>+2.faiss``) beside the current one and swaps by replacing the
sidecar atomically; only then are the old generation's files removed. Searches read the
sidecar first, so they use the old complete index until the swap, and one that loses a race
with the removal starts over on the new sidecar.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

import numpy as np

from grappa_cli.console import NullReporter, Reporter
from grappa_cli.errors import DataError, StoreError, UsageError
from grappa_cli.project import Project
from grappa_cli.records import provenance as prov
from grappa_cli.serving.vector_index import IndexParams, IndexSettings

if TYPE_CHECKING:
    import faiss

    from grappa_cli.storage.store import Store

DEFAULT_NAME = "default"
SIDECAR_FORMAT = "grappa-index"
SIDECAR_VERSION = "1"
#: Rows read from the store per step while filling the index.
READ_ROWS = 65536
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Sidecar(TypedDict):
    """``indexes/<name>.json``: what an index was built from (read back by ``grappa search``)."""

    format: str
    index_file: NotRequired[str]  # absent in sidecars written before generations
    format_version: str
    name: str
    gallery: str
    store_key: str
    paths: str
    embeddings_fingerprint: str | None
    embeddings_completed: str | None
    model: str
    model_fingerprint: str
    model_weights: NotRequired[str | None]  # absent in sidecars of older grappa versions
    model_id: str
    model_inputs: dict[str, str]
    dim: int
    index: IndexParams
    images: int
    vectors: int
    bad: int
    created: str
    versions: dict[str, str]


def gallery_key(name: str) -> str:
    return f"gallery/{name}"


def index_path(project: Project, name: str) -> Path:
    return project.indexes_dir / f"{name}.faiss"


def sidecar_path(project: Project, name: str) -> Path:
    return project.indexes_dir / f"{name}.json"


def check_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith((".faiss", ".json")):
        raise UsageError(f"invalid index name {name!r}",
                         hint="use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return name


def list_images(root: Path) -> list[str]:
    """Absolute paths of the image files under ``root`` (recursively, hidden entries skipped), sorted."""
    from grappa_cli.data.images import IMAGE_EXTENSIONS

    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"gallery folder {root} does not exist or is not a folder", hint="pass a folder of images")
    from grappa_cli.data.tasks.imagefolder import walk_images, warn_skipped

    found, skipped = walk_images(root, IMAGE_EXTENSIONS)
    warn_skipped(root, skipped)
    if not found:
        raise DataError(f"no image files under {root}",
                        hint=f"the gallery needs files ending in {', '.join(IMAGE_EXTENSIONS)}")
    return sorted(found)


def default_model(project: Project) -> str:
    """The project's default model: a fused one (Grappa-avg first; see
    :data:`~grappa_cli.reporting.results.DEFAULT_MODEL_ORDER`), else the backbone."""
    from grappa_cli.pipeline.stages import models
    from grappa_cli.reporting.results import default_of

    return default_of(ref.name for ref in models.available(project))


def index_names(project: Project) -> list[str]:
    """Names of the finished indexes (those with a sidecar)."""
    return sorted(p.stem for p in project.indexes_dir.glob("*.json"))


def read_sidecar(project: Project, name: str) -> Sidecar | None:
    path = sidecar_path(project, name)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data if data.get("format") == SIDECAR_FORMAT else None


@dataclass
class IndexOptions:
    model: str | None = None
    name: str = DEFAULT_NAME
    settings: IndexSettings = field(default_factory=IndexSettings)
    device: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    force: bool = False


@dataclass
class IndexResult:
    name: str
    model: str
    gallery: str
    images: int
    vectors: int
    dim: int
    index: IndexParams
    bad: list[dict[str, str]]
    index_path: str
    embed_seconds: float = 0.0
    index_seconds: float = 0.0
    embedding_skipped: bool = False
    index_skipped: bool = False


def build_gallery_index(project: Project, gallery: Path, options: IndexOptions,
                        reporter: Reporter | None = None) -> IndexResult | None:
    """Embed ``gallery`` (or resume) and build its index; returns None on non-zero torchrun ranks."""
    from grappa_cli.data.images import decode_min_side
    from grappa_cli.data.tasks.base import ImageList
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model.backbones.backbone import build_backbone
    from grappa_cli.model.export import EmbeddingModel
    from grappa_cli.pipeline.stages import models
    from grappa_cli.pipeline.stages.embed import EmbedJob, run_embedding
    from grappa_cli.pipeline.stages.extract import backbone_spec
    from grappa_cli.runtime import Precision, precision_params, resolve_device
    from grappa_cli.train import distributed

    reporter = reporter or NullReporter()
    name = check_name(options.name)
    paths = list_images(gallery)
    config = project.config()
    distributed.init_distributed()
    ref = models.parse(options.model or default_model(project))
    backbone = build_backbone(backbone_spec(config))
    embedder = EmbeddingModel(models.load(project, ref, backbone), name=ref.name)
    model_inputs = models.inputs(project, ref)
    model_fp = models.fingerprint(project, ref, backbone)
    chunk_rows = config.data.chunk_size
    params = {"model": ref.name, "model_fingerprint": model_fp, "dtype": "float32", "chunk_size": chunk_rows,
              **precision_params(config.runtime)}
    inputs = {"images": ImageList(paths).fingerprint(), **model_inputs}
    store = project.store()
    sidecar = read_sidecar(project, name)
    current = sidecar["store_key"] if sidecar else None
    if current and not options.force and store.state(current, params, inputs) == "stale":
        why = prov.describe_mismatch(store.provenance(current) or {}, params, inputs)
        raise StoreError(f"the gallery embeddings of index {name!r} were made from other inputs ({why})",
                         hint="pass --force to redo them (the gallery's files or the model changed), "
                              "or choose another --name to keep both")
    # Searches keep reading the current generation; a rebuild fills the next one beside it.
    reuse = current and not options.force and store.state(current, params, inputs) == "complete"
    key = current if current and reuse else next_generation(name, current)
    job = EmbedJob(key, "index", paths, None, params, inputs, f"gallery {name}")
    embedded = run_embedding(
        store, job, embedder, eval_transform(backbone.data_config), dim=backbone.embed_dim, dtype="float32",
        chunk_rows=chunk_rows, batch_size=options.batch_size or config.data.batch_size,
        num_workers=config.data.num_workers if options.num_workers is None else options.num_workers,
        device=resolve_device(options.device or config.runtime.device), amp=Precision.of(config.runtime),
        min_side=decode_min_side(backbone.data_config), refresh=True, reporter=reporter,
    )
    if not distributed.is_main():
        return None
    group = store.provenance(job.key) or {}
    valid = store.read(f"{job.key}/valid")
    settings = options.settings.resolved(int(valid.sum()))
    result = IndexResult(name, ref.name, str(Path(gallery).expanduser().resolve()), len(paths), int(valid.sum()),
                         backbone.embed_dim, settings.params(), embedded.bad,
                         str(project.indexes_dir / f"{generation_name(job.key)}.faiss"),
                         embed_seconds=embedded.seconds, embedding_skipped=embedded.skipped)
    if (sidecar and not options.force and sidecar.get("embeddings_fingerprint") == group.get("fingerprint")
            and sidecar.get("embeddings_completed") == group.get("completed")
            and sidecar.get("index") == settings.params() and index_file(project, sidecar).is_file()):
        result.index_skipped = True
        return result
    start = time.perf_counter()
    index = _fill_index(store, job.key, valid, settings, backbone.embed_dim, reporter)
    result.index_seconds = time.perf_counter() - start
    _write(project, name, index, sidecar, {
        "format": SIDECAR_FORMAT, "index_file": f"{generation_name(job.key)}.faiss",
        "format_version": SIDECAR_VERSION, "name": name, "gallery": result.gallery,
        "store_key": job.key, "paths": f"{job.key}/paths", "embeddings_fingerprint": group.get("fingerprint"),
        "embeddings_completed": group.get("completed"), "model": ref.name, "model_fingerprint": model_fp,
        "model_weights": models.weights_digest(project, ref),
        "model_id": backbone.model_id, "model_inputs": model_inputs, "dim": backbone.embed_dim,
        "index": settings.params(), "images": len(paths), "vectors": result.vectors, "bad": len(embedded.bad),
        "created": prov.now(), "versions": prov.package_versions(),
    })
    return result


def _fill_index(store: Store, key: str, valid: np.ndarray, settings: IndexSettings, dim: int,
                reporter: Reporter) -> faiss.IndexIDMap:
    from grappa_cli.serving.vector_index import build_index

    rows = np.flatnonzero(valid)
    training = None
    if settings.kind == "ivf":  # faiss trains on at most 256 vectors per list anyway
        assert settings.nlist is not None  # the settings are resolved
        rng = np.random.default_rng(0)
        take = min(len(rows), 256 * int(settings.nlist))
        training = store.read(f"{key}/embeddings", np.sort(rng.choice(rows, size=take, replace=False)))

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with reporter.task(f"building the {settings.kind} index", total=len(rows), unit="vec") as bar:
            for start in range(0, len(valid), READ_ROWS):
                stop = min(start + READ_ROWS, len(valid))
                keep = valid[start:stop]
                if keep.any():
                    vectors = store.read(f"{key}/embeddings", slice(start, stop))[keep]
                    yield np.arange(start, stop)[keep], vectors
                    bar.advance(int(keep.sum()))

    return build_index(settings, dim, batches(), training)


def _write(project: Project, name: str, index: faiss.Index, old: Sidecar | None, sidecar: Sidecar) -> None:
    """The index file, then the sidecar naming it (one atomic replace swaps generations),
    then the previous generation's files, which no new search can reach any more."""
    from grappa_cli.serving.vector_index import save_index
    from grappa_cli.storage.fsutil import atomic_write_text

    project.indexes_dir.mkdir(parents=True, exist_ok=True)
    new_file = project.indexes_dir / sidecar["index_file"]
    save_index(index, new_file)
    atomic_write_text(sidecar_path(project, name), json.dumps(sidecar, indent=2, default=str) + "\n")
    if old:
        old_file = index_file(project, old)
        if old_file != new_file:
            old_file.unlink(missing_ok=True)
        if old.get("store_key") and old["store_key"] != sidecar["store_key"]:
            project.store().delete(old["store_key"])


def generation_name(key: str) -> str:
    """``gallery/default+3`` -> ``default+3`` (file stem of that generation's index)."""
    return key.split("/", 1)[1]


def next_generation(name: str, current: str | None) -> str:
    """The store key of the next build of index ``name``: ``gallery/<name>``, then ``gallery/<name>+2``, ..."""
    if current is None:
        return gallery_key(name)
    tail = current.rsplit("+", 1)[1] if "+" in current else "1"
    return f"{gallery_key(name)}+{(int(tail) if tail.isdigit() else 1) + 1}"


def index_file(project: Project, sidecar: Sidecar) -> Path:
    """The faiss file a sidecar names (``<name>.faiss`` for indexes built before generations)."""
    return project.indexes_dir / sidecar.get("index_file", f"{sidecar['name']}.faiss")


def require_index(project: Project, name: str | None) -> Sidecar:
    """The sidecar of index ``name`` (default: ``default``, else the only index), or a helpful error."""
    names = index_names(project)
    if name is None:
        name = DEFAULT_NAME if DEFAULT_NAME in names or len(names) != 1 else names[0]
    check_name(name)
    sidecar = read_sidecar(project, name)
    if sidecar is None or not index_file(project, sidecar).is_file():
        others = f"; existing indexes: {', '.join(names)}" if names else ""
        flag = "" if name == DEFAULT_NAME else f" --name {name}"
        raise StoreError(f"no index named {name!r} in this project{others}",
                         hint=f"run `grappa index GALLERY_DIR{flag}` first")
    return sidecar

