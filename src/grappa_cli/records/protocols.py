"""What the records read of a project and of its feature store, as Protocols.

The records sit below :mod:`grappa_cli.project` and :mod:`grappa_cli.storage.store` in the
import graph (the store judges its artifacts with :func:`grappa_cli.records.artifacts.judge`),
so they name the parts they use here instead of importing those classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from zarr import Array


class RecordStore(Protocol):
    """The provenance records of a feature store (:class:`grappa_cli.storage.store.Store`)."""

    def provenance(self, key: str) -> dict[str, Any] | None: ...


class FeatureStore(RecordStore, Protocol):
    """A feature store's records and arrays (:class:`grappa_cli.storage.store.Store`)."""

    def exists(self, key: str) -> bool: ...

    def array(self, key: str) -> Array: ...


class ProjectPaths(Protocol):
    """Where a project keeps its artifacts (:class:`grappa_cli.project.Project`)."""

    @property
    def root(self) -> Path: ...

    @property
    def checkpoints(self) -> Path: ...

    @property
    def store_path(self) -> Path: ...

    def store(self, *, mode: Literal["r"]) -> RecordStore: ...
