"""The paper's fusion strategies and baselines, registered as ordinary plugins."""

from __future__ import annotations

from typing import Any

from grappa_cli.hookspecs import hookimpl


@hookimpl
def register_fusion_strategies(register: Any) -> None:
    from grappa_cli.fusion.strategies import BUILTIN_STRATEGIES

    for strategy in BUILTIN_STRATEGIES:
        register(strategy())
