"""grappa: granularity-aware adaptation of a frozen image backbone for retrieval over many tasks.

The heavy public API (``GrappaModel``, ``load_model``, ``retrieval_metrics``) is imported
lazily so that ``import grappa_cli`` (and ``grappa --help``) never pulls in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "GrappaModel": "grappa_cli.model.grappa",
    "Adaptor": "grappa_cli.model.adaptor",
    "AdaptorBank": "grappa_cli.model.adaptor",
    "build_backbone": "grappa_cli.model.backbones.backbone",
    "load_model": "grappa_cli.model.export",
    "EmbeddingModel": "grappa_cli.model.export",
    "retrieval_metrics": "grappa_cli.retrieval.metrics",
    "Project": "grappa_cli.project",
    "GrappaConfig": "grappa_cli.config",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'grappa_cli' has no attribute {name!r}")
    return getattr(import_module(module), name)
