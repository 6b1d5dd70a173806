"""Embed a list of images with a model into a store group, resumably and in parallel.

Shared by ``grappa extract`` (the frozen backbone over the training set and test splits)
and ``grappa eval`` (any model over a task's test split). The group holds:

* ``embeddings`` [n, D] (float16 or float32), filled chunk by chunk (``ChunkedArray``);
* ``valid`` [n] bool and ``error`` [n] str: which images could not be decoded, and why;
* ``paths`` [n] str and, for labelled splits, ``labels`` [n] int32.

Interrupted work resumes from the chunks still pending and ends with exactly the values an
uninterrupted run writes (every chunk is a pure function of its images and the model).
Under ``torchrun`` each rank embeds a disjoint share of the pending chunks; rank 0 alone
writes metadata.

On a GPU the loop keeps the device busy: batches arrive in pinned memory and are copied
without blocking, bf16 autocast runs the model, and results come back through
:class:`~grappa_cli.runtime.HostCopies`, one batch behind, so the host never waits for the
batch it has just queued. ``compile=True`` (or ``GRAPPA_COMPILE=1``) runs the model through
``torch.compile``. Large batches help on a GPU (``data.batch_size`` / ``eval.batch_size`` of
512-1024 for a ViT-S/16); throughput is then bounded by JPEG decoding in the DataLoader
workers (``data.num_workers``: about one per CPU core).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from grappa_cli.console import NullReporter, Reporter
from grappa_cli.errors import DataError, StoreError
from grappa_cli.records import provenance as prov
from grappa_cli.storage import diskerrors
from grappa_cli.storage.store import ChunkedArray, Store, unreadable_files

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from grappa_cli.runtime import Precision


@dataclass
class EmbedResult:
    key: str
    images: int
    bad: list[dict[str, str]] = field(default_factory=list)
    dim: int = 0
    seconds: float = 0.0
    skipped: bool = False

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EmbedJob:
    """What to embed and where: one store group."""

    key: str
    stage: str
    paths: list[str]
    labels: np.ndarray | None
    params: dict[str, object]
    inputs: dict[str, str]
    summary_name: str = ""
    #: rows already embedded by an earlier extraction of a prefix of ``paths`` (an incremental
    #: update of the training set): kept bit-identical, never embedded again
    keep_rows: int = 0
    #: fields the complete record gets in the same write that completes it
    record_extra: dict[str, object] = field(default_factory=dict)


def _dist() -> tuple[int, int]:
    from grappa_cli.train import distributed

    return distributed.rank(), distributed.world_size()


def _broadcast(value: str | None) -> str | None:
    from grappa_cli.train import distributed

    return distributed.broadcast_object(value)


def _barrier() -> None:
    from grappa_cli.train import distributed

    distributed.barrier()


def prepare(store: Store, job: EmbedJob, *, dim: int, dtype: str, chunk_rows: int, force: bool,
            refresh: bool = False) -> str:
    """Create the group's arrays unless a matching partial/complete fill exists.

    Returns ``complete`` (nothing to do), ``partial`` (resume the pending chunks) or
    ``created`` (arrays made afresh: first run, ``--force``, or stale work with ``force`` or
    ``refresh``, which redoes stale work only, as ``grappa run`` does).
    """
    state = store.state(job.key, job.params, job.inputs)
    n = len(job.paths)
    if job.keep_rows and not force:
        if state in ("complete", "partial") and store.intact(job.key, _arrays(job, n, chunk_rows)):
            return state
        grow(store, job, chunk_rows=chunk_rows, dim=dim, dtype=dtype)
        return "grown"
    if state == "stale" and not (force or refresh):
        old = store.provenance(job.key) or {}
        raise StoreError(
            f"{job.key} was made from other inputs ({prov.describe_mismatch(old, job.params, job.inputs)})",
            hint=f"rerun with --force to redo it (this makes what was built from {job.key} stale)",
        )
    if state in ("complete", "partial") and not force and store.intact(job.key, _arrays(job, n, chunk_rows)):
        return state
    diskerrors.expect(n * dim * np.dtype(dtype).itemsize + sum(len(x) for x in job.paths) * 4)
    store.delete(job.key)
    # Arrays first, record last: a group without a record is remade, never resumed.
    ChunkedArray.create(store, f"{job.key}/embeddings", (n, dim), dtype, chunk_rows)
    rows = max(1, min(chunk_rows, max(n, 1)))
    store.create_array(f"{job.key}/valid", (n,), bool, (rows,), fill_value=False)
    store.create_array(f"{job.key}/error", (n,), str, (rows,))
    store.write_array(f"{job.key}/paths", np.asarray(job.paths, dtype=str), (rows,))
    if job.labels is not None:
        store.write_array(f"{job.key}/labels", np.asarray(job.labels, dtype=np.int32), (rows,))
    store.begin(job.key, job.stage, job.params, job.inputs)
    return "created"


def grow(store: Store, job: EmbedJob, *, chunk_rows: int, dim: int, dtype: str) -> None:
    """Extend a group by the images after its first ``job.keep_rows`` rows (an incremental update).

    The record goes first here (incomplete, with the new inputs and a ``growing`` note), then
    the arrays are lengthened: an interrupted grow leaves a partial record whose rerun lengthens
    them again (lengthening to the same size changes nothing) and fills the pending chunks. The
    kept rows are never written with other values: the chunk they share with the first new
    rows is filled from the stored values (see :func:`run_embedding`).
    """
    n, kept = len(job.paths), job.keep_rows
    old = store.provenance(job.key) or {}
    diskerrors.expect((n - kept) * dim * np.dtype(dtype).itemsize + sum(len(x) for x in job.paths[kept:]) * 4)
    from grappa_cli.records import increments

    store.begin(job.key, job.stage, job.params, job.inputs,
                increments=[inc.to_dict() for inc in increments.recorded(old)], growing={"from": kept, "to": n})
    data = store.array(f"{job.key}/embeddings")
    rows_per_chunk = int(data.chunks[0])
    data.resize((n, dim))
    done = store.array(f"{job.key}/embeddings_done")
    n_chunks = -(-n // rows_per_chunk)
    if int(done.shape[0]) != n_chunks:
        done.resize((n_chunks,))
    first_new = kept // rows_per_chunk
    done[first_new:] = False  # the chunk shared with the kept rows is refilled (from their stored values)
    for name in ("valid", "error", "paths") + (("labels",) if job.labels is not None else ()):
        store.array(f"{job.key}/{name}").resize((n,))
    store.array(f"{job.key}/paths")[kept:] = np.asarray(job.paths[kept:], dtype=str)
    if job.labels is not None:
        store.array(f"{job.key}/labels")[kept:] = np.asarray(job.labels[kept:], dtype=np.int32)
    store.array(f"{job.key}/valid")[kept:] = False


def _arrays(job: EmbedJob, n: int, chunk_rows: int) -> dict[str, int]:
    """The arrays (and their row counts) a group of ``job`` must hold to be resumed or used."""
    rows = max(1, min(chunk_rows, max(n, 1)))
    arrays = {"embeddings": n, "embeddings_done": -(-n // rows), "valid": n, "error": n, "paths": n}
    if job.labels is not None:
        arrays["labels"] = n
    return arrays


def run_embedding(
    store: Store, job: EmbedJob, model: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor], *,
    dim: int, dtype: str = "float16",
    chunk_rows: int = 4096, batch_size: int = 256, num_workers: int = 0, device: Any = None,
    amp: bool | Precision = True, min_side: int | None = None, force: bool = False, refresh: bool = False,
    reporter: Reporter | None = None, compile: bool | None = None,
) -> EmbedResult:
    """Fill ``job.key`` with ``model(images)`` for every image (see module docstring)."""
    import torch

    from grappa_cli.data.images import ImageDataset, make_loader
    from grappa_cli.runtime import HostCopies, autocast, maybe_compile

    reporter = reporter or NullReporter()
    rank, world = _dist()
    if not job.paths:
        raise DataError(f"{job.key}: no images to embed", hint="check the task's dataset root")
    state = (prepare(store, job, dim=dim, dtype=dtype, chunk_rows=chunk_rows, force=force, refresh=refresh)
             if rank == 0 else None)
    state = _broadcast(state)  # every rank takes the same branch, so barriers stay paired
    if state == "complete":
        return _result(store, job.key, skipped=True)
    chunks = ChunkedArray(store, f"{job.key}/embeddings")
    valid = store.array(f"{job.key}/valid")
    errors = store.array(f"{job.key}/error")
    mine = [c for c in chunks.pending() if c % world == rank]
    kept = job.keep_rows
    indices = [i for c in mine for i in range(max(chunks.rows(c).start, kept), chunks.rows(c).stop)]
    start = time.perf_counter()
    if indices:
        dataset = ImageDataset(job.paths, transform, indices, min_side=min_side)
        loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=device)
        pending_rows = {c: chunks.rows(c) for c in mine}
        buffers = {c: np.zeros((r.stop - r.start, dim), np.float32) for c, r in pending_rows.items()}
        ok = {c: np.zeros(r.stop - r.start, bool) for c, r in pending_rows.items()}
        why = {c: np.full(r.stop - r.start, "", dtype=object) for c, r in pending_rows.items()}
        remaining = {c: r.stop - max(r.start, kept) for c, r in pending_rows.items()}
        for c, r in pending_rows.items():  # a chunk shared with kept rows keeps their stored values
            if r.start < kept:
                stored = slice(r.start, min(r.stop, kept))
                width = stored.stop - stored.start
                buffers[c][:width] = np.asarray(chunks.data[stored], dtype=np.float32)
                ok[c][:width] = np.asarray(valid[stored], dtype=bool)
                why[c][:width] = np.asarray(errors[stored]).astype(object)
        model = maybe_compile(model.to(device).eval(), compile)
        copies = HostCopies()

        def finish(done_rows: list[int]) -> None:
            """Count rows as done; write every chunk whose rows are all done."""
            for index in done_rows:
                c = index // chunks.chunk_rows
                remaining[c] -= 1
                if remaining[c] == 0:
                    rows = pending_rows[c]
                    valid[rows] = ok[c]
                    errors[rows] = why[c].astype(str)
                    chunks.write(c, buffers.pop(c).astype(dtype))
            bar.advance(len(done_rows))

        def embedded(ready: list[tuple[np.ndarray, list[int]]]) -> None:
            for out, done_rows in ready:
                for row, index in enumerate(done_rows):
                    c = index // chunks.chunk_rows
                    buffers[c][index - pending_rows[c].start] = out[row]
                    ok[c][index - pending_rows[c].start] = True
                finish(done_rows)

        with reporter.task(f"embedding {job.summary_name or job.key}", total=len(indices), unit="img") as bar:
            for batch in loader:
                if len(batch.indices):
                    with torch.inference_mode(), autocast(device, amp):
                        out = forward_in_parts(model, batch.images.to(device, non_blocking=True))
                    embedded(copies.push(out.float(), [int(i) for i in batch.indices]))
                for index, error in batch.bad:
                    c = index // chunks.chunk_rows
                    why[c][index - pending_rows[c].start] = error
                finish([index for index, _ in batch.bad])
            embedded(copies.flush())
    seconds = time.perf_counter() - start
    _barrier()
    if rank == 0:
        if not chunks.complete():
            raise StoreError(f"{job.key}: some chunks were not written", hint="rerun the same command to resume")
        finish_group(store, job, np.asarray(valid[:]), dim=dim, dtype=dtype, seconds=seconds, embedded=len(indices))
    result = _result(store, job.key)
    result.seconds = seconds
    result.images = len(indices)
    return result




#: On the CPU, the model sees at most this many images at once; a larger batch is run in parts.
#: Inference activations grow with the batch while throughput does not (one image's work is the
#: same either way): the demo's evaluation at 256 images per batch peaked at 1.84 GB resident,
#: at 64 at 1.47 GB (docs/benchmarks.md). GPUs keep the whole batch.
CPU_PART = 64


def finish_group(store: Store, job: EmbedJob, valid_mask: np.ndarray, *, dim: int, dtype: str,
                 seconds: float | None = None, embedded: int | None = None) -> None:
    """Mark a filled embedding group complete, listing its unreadable images (none readable: an error).

    ``seconds`` and ``embedded``: how long this run took for how many images (the measured rate
    :mod:`grappa_cli.pipeline.estimate` predicts later work from).
    """
    if not valid_mask.any():
        raise DataError(f"{job.key}: none of the {len(job.paths)} images could be read",
                        hint="check the dataset root and the image files")
    bad = unreadable_files(store, job.key, valid_mask)
    store.finish(job.key, summary={"images": int(valid_mask.sum()), "bad": len(bad), "dim": dim},
                 images=len(job.paths), bad_files=bad[:1000], dim=dim, dtype=dtype, growing=None,
                 **({"seconds": round(seconds, 3), "embedded": embedded} if seconds and embedded else {}),
                 **job.record_extra)


def forward_in_parts(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)``, on the CPU in parts of :data:`CPU_PART` images, concatenated in order."""
    import torch

    if images.device.type != "cpu" or len(images) <= CPU_PART:
        return model(images)
    return torch.cat([model(part) for part in images.split(CPU_PART)])


def _result(store: Store, key: str, skipped: bool = False) -> EmbedResult:
    record = store.provenance(key) or {}
    return EmbedResult(key, int(record.get("images", 0)), list(record.get("bad_files", [])),
                       int(record.get("dim", 0)), 0.0, skipped)


def read_embeddings(store: Store, key: str, *, only_valid: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """float32 embeddings of a complete group and the row indices they belong to."""
    embeddings = store.read(f"{key}/embeddings").astype(np.float32)
    rows = np.arange(len(embeddings))
    if only_valid:
        mask = store.read(f"{key}/valid")
        return embeddings[mask], rows[mask]
    return embeddings, rows
