"""Check every plugin name ``grappa.toml`` uses before a command starts working.

A misspelt fusion strategy would otherwise surface only after extraction, clustering and
adaptation had run. :func:`check_config` looks each name up in its registry and raises one
``ConfigError`` naming the key, the unknown name, the closest installed one and the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grappa_cli.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig


def check_config(config: GrappaConfig) -> None:
    """Raise :class:`ConfigError` for the first plugin name in ``config`` no plugin registers."""
    from grappa_cli import plugins

    wanted: list[tuple[str, str, str]] = [("clusterers", "[cluster] backend", config.cluster.backend)]
    from grappa_cli.pipeline.fusion_choice import AUTO_GPU

    strategies = AUTO_GPU if config.fuse.strategies == "auto" else config.fuse.strategies
    wanted += [("fusion_strategies", "[fuse] strategies", name) for name in strategies]
    wanted += [("tasks", f"[tasks.{task.name}] type", task.type) for task in config.tasks.values()]
    provider = getattr(config.backbone, "provider", "auto")
    if provider and provider != "auto":
        wanted.append(("backbones", "[backbone] provider", provider))
    for kind, key, name in wanted:
        try:
            plugins.registry(kind).get(name)
        except PluginError as exc:
            raise ConfigError(f"{config.path} {key}: {exc.message}", hint=exc.hint) from None
