"""The extension points of grappa (pluggy hook specifications).

Each hook receives a ``register`` callback and calls it once per thing it adds, the
style of ``llm`` and ``tox``. Built-in backbones, clusterers, fusion strategies, tasks,
metrics and commands are registered through these same hooks by ordinary plugins in
``grappa_cli.builtin``; third-party packages add theirs through the ``grappa``
entry-point group. Keep implementations light at import time: import heavy libraries
inside the hook or inside the registered object's methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

PROJECT_NAME = "grappa"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The callback a registration hook receives: called once per object the plugin adds.
Register = Callable[[object], None]


@hookspec
def register_backbones(register: Register) -> None:
    """Add backbone providers: objects with ``name``, ``supports(model_name)`` and ``build(spec)``.

    See :class:`grappa_cli.model.backbones.backbone.BackboneProvider`.
    """


@hookspec
def register_clusterers(register: Register) -> None:
    """Add clustering backends: objects with ``name``, ``description``, an optional ``settings``
    dict (recorded in provenance) and ``fit(x, k, *, seed, niter, reporter=None) -> ClusterResult``
    over L2-normalised float32 features.

    See :class:`grappa_cli.clustering.base.Clusterer`.
    """


@hookspec
def register_fusion_strategies(register: Register) -> None:
    """Add fusion strategies: objects with ``name`` and ``train(context)``.

    See :class:`grappa_cli.fusion.base.FusionStrategy`.
    """


@hookspec
def register_tasks(register: Register) -> None:
    """Add retrieval tasks (dataset readers): objects with ``name`` and ``load(root, **options)``.

    See :class:`grappa_cli.data.tasks.base.TaskReader`.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Add retrieval metrics: objects with ``name`` and ``compute(neighbors)``.

    See :class:`grappa_cli.retrieval.metrics.Metric`.
    """


@hookspec
def register_commands(cli: typer.Typer) -> None:
    """Add commands to the ``grappa`` command line (``cli`` is the root ``typer.Typer`` app)."""
