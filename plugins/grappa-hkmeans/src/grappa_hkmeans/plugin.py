"""The plugin module named by the ``grappa`` entry point: registers the ``hkmeans`` clusterer."""

from __future__ import annotations

from typing import Any

from grappa_cli.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_clusterers(register: Any) -> None:
    from grappa_hkmeans.hkmeans import HierarchicalKMeans

    register(HierarchicalKMeans())
