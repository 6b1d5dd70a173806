"""Built-in commands, registered through the same hook third-party plugins use."""

from __future__ import annotations

from typing import Any

from grappa_cli.hookspecs import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from grappa_cli.cli import cluster, init, plugins_cmd, status

    cli.command("init")(init.init)
    cli.command("status")(status.status)
    cli.command("plugins")(plugins_cmd.plugins)
    cli.command("cluster")(cluster.cluster)
