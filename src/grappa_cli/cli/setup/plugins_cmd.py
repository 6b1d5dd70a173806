"""``grappa plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from grappa_cli.cli.common import Flag, JsonOption, print_json


def plugins(
    all_: Annotated[bool, Flag("--all", help="Include the built-in plugins.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List installed plugins with their version and what each registers."""
    from rich.table import Table

    from grappa_cli.console import hint, out
    from grappa_cli.plugins import describe_plugins

    infos = describe_plugins(include_builtin=all_)
    if as_json:
        print_json([asdict(i) for i in infos])
        return
    if not infos:
        out.print("No third-party plugins installed.")
        hint("`grappa plugins --all` also lists the built-in ones.")
        return
    table = Table(title="grappa plugins")
    table.add_column("plugin")
    table.add_column("version")
    table.add_column("registers")
    for info in infos:
        what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registers.items())
        if "register_commands" in info.hooks:
            what = "; ".join(filter(None, [what, "commands"]))
        table.add_row(info.name + (" (built-in)" if info.builtin else ""), info.version, what or "-")
    out.print(table)
