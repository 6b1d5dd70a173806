"""The paper's fusion strategies and baselines, registered as ordinary plugins."""

from __future__ import annotations

from grappa_cli.hookspecs import Register, hookimpl


@hookimpl
def register_fusion_strategies(register: Register) -> None:
    from grappa_cli.fusion.strategies import BUILTIN_STRATEGIES

    for strategy in BUILTIN_STRATEGIES:
        register(strategy())
