"""The project's zarr feature store: a small API the stages share.

Stages create and fill chunked, compressed arrays, read slices, and attach a provenance
record (``attrs["grappa"]``) to the group that holds their output. The record's
``complete`` flag and ``fingerprint`` let a stage skip finished work, resume partial
work, and refuse to mix artifacts made from different inputs.

Layout (groups)::

    features/train            training-set features of the frozen backbone (+ paths)
    features/test/<task>      a task's test-split features (+ paths, labels)
    clusters/k<K>             centroids, labels, sizes of one k-means run
    knn/<name>                k-NN graphs
    eval/<model>/<task>       embeddings of a task's test split under a model
    cache/<name>              decoded training images (uint8), ``grappa cache build``
    gallery/<name>            embeddings of a gallery folder under a model (``grappa index``)

Only one process writes metadata (creates arrays, sets attributes); several processes
may fill disjoint chunks of an array created beforehand (see :class:`ChunkedArray`).

Write protocol (what makes an interrupted write harmless): a group's arrays are created,
and those written in one go filled, *before* its record; the record is written last and
``complete`` only once every chunk is in. A group without a record is garbage to remake, a
resumed partial group is checked for its arrays (:meth:`Store.intact`) and remade when one
is missing, and :meth:`Store.delete` first moves the group out of the store in one rename,
so no half-deleted group can keep its old record. Every key written goes through
:func:`grappa_cli.storage.faults.point`, so tests can fail any single write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np

from grappa_cli.errors import StoreError
from grappa_cli.records import provenance as prov
from grappa_cli.storage import faults

if TYPE_CHECKING:
    import numpy.typing as npt
    from zarr import Array, Group
    from zarr.core.buffer import Buffer
    from zarr.core.indexing import Selection
    from zarr.storage import LocalStore

_T = TypeVar("_T")

State = Literal["missing", "partial", "complete", "stale"]
ATTR = "grappa"


def _local_store(path: Path, read_only: bool) -> LocalStore:
    """A zarr ``LocalStore`` whose every key write is a :func:`faults.point`."""
    from zarr.storage import LocalStore

    class CountingLocalStore(LocalStore):
        async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
            faults.point(f"{self.root.name}/{key}")
            await super()._set(key, value, exclusive=exclusive)

        def with_read_only(self, read_only: bool = False) -> CountingLocalStore:
            return CountingLocalStore(self.root, read_only=read_only)

    return CountingLocalStore(path, read_only=read_only)


def _open_or_create(open_group: Callable[[], _T]) -> _T:
    """``open_group()``, once more if another process created the group while it ran.

    zarr's open-or-create looks for the group, then creates it; when another process (a torchrun
    rank) creates it in between, zarr raises ``ContainsGroupError``. The group exists then, so
    the second call opens it.
    """
    from zarr.errors import ContainsGroupError

    try:
        return open_group()
    except ContainsGroupError:
        return open_group()


#: How :class:`Store` opens its group (zarr's modes).
StoreMode = Literal["r", "r+", "a", "w", "w-"]


class Store:
    """A zarr v3 group on the local filesystem."""

    def __init__(self, path: Path, *, mode: StoreMode = "a") -> None:
        import zarr

        self.path = Path(path)
        if mode == "r" and not self.path.exists():
            raise StoreError(f"no feature store at {self.path}", hint="run `grappa init` to create the project")
        self.root: Group = _open_or_create(lambda: zarr.open_group(_local_store(self.path, mode == "r"), mode=mode))

    # -- navigation -------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return key in self.root

    def group(self, key: str) -> Group:
        """The group at ``key``, created (with parents) if needed."""
        return _open_or_create(lambda: self.root.require_group(key))

    def array(self, key: str) -> Array:
        if key not in self.root:
            raise StoreError(f"the store has no array {key!r}")
        return cast("Array", self.root[key])  # stages keep arrays, never groups, at array keys

    def children(self, key: str) -> list[str]:
        """Names of the groups directly under ``key`` (empty when ``key`` is missing)."""
        if key not in self.root:
            return []
        return sorted(name for name, _ in cast("Group", self.root[key]).groups())

    def delete(self, key: str) -> None:
        """Remove ``key``: one rename out of the store (atomic), then the files.

        Deleting file by file could stop half-way and leave a group whose record survives
        its arrays; after the rename the group is simply gone.
        """
        import shutil
        import uuid

        if key not in self.root:
            return
        where = self.path / key
        if where.is_dir():
            trash = self.path.parent / f".{self.path.name}.trash-{uuid.uuid4().hex[:12]}"
            faults.point(f"{self.path.name}/{key} (delete)")
            where.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            del self.root[key]

    def intact(self, key: str, arrays: dict[str, int]) -> bool:
        """Whether group ``key`` holds each array ``name`` with ``rows`` rows (resume check)."""
        for name, rows in arrays.items():
            full = f"{key}/{name}"
            if full not in self.root:
                return False
            shape = getattr(self.root[full], "shape", None)  # a group where an array belongs: broken
            if not shape or int(shape[0]) != rows:
                return False
        return True

    # -- arrays -----------------------------------------------------------------------
    def create_array(
        self, key: str, shape: tuple[int, ...], dtype: npt.DTypeLike, chunks: tuple[int, ...] | None = None,
        *, fill_value: object = None,
    ) -> Array:
        """A new (overwritten) compressed array; chunks default to ~4096 rows."""
        if chunks is None:
            rows = max(1, min(shape[0] if shape else 1, 4096))
            chunks = (rows, *shape[1:]) if shape else ()
        kwargs: dict[str, Any] = {"shape": shape, "dtype": dtype, "chunks": chunks, "overwrite": True}
        if fill_value is not None:
            kwargs["fill_value"] = fill_value
        return self.root.create_array(key, **kwargs)

    def write_array(self, key: str, data: npt.ArrayLike, chunks: tuple[int, ...] | None = None) -> Array:
        """Create ``key`` and write ``data`` into it in one go."""
        data = np.asarray(data)
        arr = self.create_array(key, data.shape, data.dtype if data.dtype.kind != "U" else str, chunks)
        if data.size:
            arr[...] = data
        return arr

    def read(self, key: str, selection: Selection = slice(None)) -> np.ndarray:
        return np.asarray(self.array(key)[selection])

    # -- provenance -------------------------------------------------------------------
    def provenance(self, key: str) -> dict[str, Any] | None:
        if key not in self.root:
            return None
        value = self.root[key].attrs.get(ATTR)
        return dict(cast("Mapping[str, Any]", value)) if value else None  # the record begin() wrote: a JSON object

    def begin(self, key: str, stage: str, params: Mapping[str, object], inputs: Mapping[str, str | None],
              **extra: object) -> dict[str, Any]:
        """Write a fresh ``complete = False`` record on group ``key`` and return it.

        Call it after the group's arrays exist: the record says they do.
        """
        record = prov.record(stage, params, inputs, **extra)
        self.group(key).attrs[ATTR] = record
        return record

    def update(self, key: str, **fields: object) -> None:
        """Merge fields into the record of ``key`` (e.g. counts discovered on the way)."""
        record = self.provenance(key) or {}
        record.update(fields)
        self.root[key].attrs[ATTR] = record

    def commit(self, key: str, stage: str, params: Mapping[str, object], inputs: Mapping[str, str | None],
               **fields: object) -> None:
        """Write a complete record in one go, for a group whose data was written in one go."""
        record = prov.record(stage, params, inputs, **fields)
        record.update(complete=True, completed=prov.now())
        self.group(key).attrs[ATTR] = record

    def finish(self, key: str, **fields: object) -> None:
        """Mark ``key`` complete: its data is fully written. Always the stage's last write."""
        self.update(key, complete=True, completed=prov.now(), **fields)

    def state(self, key: str, params: Mapping[str, object], inputs: Mapping[str, str | None]) -> State:
        """Whether ``key`` is missing, partial or complete for these params/inputs, or stale
        (:func:`grappa_cli.records.artifacts.judge`, the decision every stage and the planner share)."""
        from grappa_cli.records.artifacts import judge

        verdict = judge(self.provenance(key), params, dict(inputs))
        return cast(State, verdict.state)

    def require_complete(self, key: str, what: str, run: str) -> dict[str, Any]:
        """The record of a finished artifact, or an error saying which command makes it."""
        record = self.provenance(key)
        if record is None or not record.get("complete"):
            state = "is incomplete" if record else "does not exist yet"
            raise StoreError(f"{what} {state}", hint=f"run `{run}`")
        return record


def unreadable_files(store: Store, key: str, valid: np.ndarray) -> list[dict[str, str]]:
    """``[{path, error}]`` of the rows of group ``key`` whose image could not be decoded.

    Groups filled from image lists keep ``paths`` and ``error`` next to a ``valid`` mask.
    """
    bad_rows = np.flatnonzero(~np.asarray(valid, dtype=bool))
    if not len(bad_rows):
        return []
    paths = store.read(f"{key}/paths", bad_rows)
    errors = store.read(f"{key}/error", bad_rows)
    return [{"path": str(p), "error": str(e)} for p, e in zip(paths, errors, strict=True)]


class ChunkedArray:
    """A row-chunked array filled chunk by chunk, in any order, resumably.

    Next to the data array ``<group>/<name>`` lives ``<group>/<name>_done``: one bool per
    chunk, each in its own zarr chunk, set only after that chunk's rows are written. A
    rerun fills only the chunks not marked done, so an interrupted fill ends with exactly
    the data an uninterrupted one writes. Processes may fill disjoint chunks concurrently
    (torchrun ranks): their writes touch disjoint files.
    """

    def __init__(self, store: Store, key: str) -> None:
        self.store = store
        self.key = key
        self.data = store.array(key)
        self.done = store.array(key + "_done")
        self.chunk_rows = int(self.data.chunks[0])

    @classmethod
    def create(
        cls, store: Store, key: str, shape: tuple[int, ...], dtype: npt.DTypeLike, chunk_rows: int,
    ) -> ChunkedArray:
        chunk_rows = max(1, min(chunk_rows, max(shape[0], 1)))
        store.create_array(key, shape, dtype, (chunk_rows, *shape[1:]))
        n_chunks = -(-shape[0] // chunk_rows)
        store.create_array(key + "_done", (n_chunks,), bool, (1,), fill_value=False)
        return cls(store, key)

    @property
    def n_chunks(self) -> int:
        return int(self.done.shape[0])

    def rows(self, chunk: int) -> slice:
        start = chunk * self.chunk_rows
        return slice(start, min(start + self.chunk_rows, self.data.shape[0]))

    def pending(self) -> list[int]:
        done = np.asarray(self.done[:])
        return [int(i) for i in np.flatnonzero(~done)]

    def write(self, chunk: int, values: npt.ArrayLike) -> None:
        rows = self.rows(chunk)
        values = np.asarray(values)
        if values.shape[0] != rows.stop - rows.start:
            raise ValueError(f"chunk {chunk} needs {rows.stop - rows.start} rows, got {values.shape[0]}")
        self.data[rows] = values
        self.done[chunk] = True

    def complete(self) -> bool:
        return bool(np.asarray(self.done[:]).all())
