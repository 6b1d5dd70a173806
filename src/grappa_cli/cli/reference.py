"""Render the CLI reference (docs/cli.md) from the live command tree.

``python -m grappa_cli.cli.reference > docs/cli.md`` regenerates it; a test fails when the
committed file differs, so the reference cannot drift from the code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from typer._click.core import Command, Context, Parameter
    from typer.core import TyperGroup, TyperOption


def _walk(command: Command, path: list[str], ctx: Context) -> list[tuple[list[str], Command]]:
    found = [(path, command)]
    if hasattr(command, "list_commands"):
        group = cast("TyperGroup", command)  # only groups list sub-commands
        for name in group.list_commands(ctx):
            sub = group.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found.extend(_walk(sub, [*path, name], ctx))
    return found


def _param_row(param: Parameter) -> str:
    if param.param_type_name == "option":
        option = cast("TyperOption", param)  # the parameter type named "option"
        names = ", ".join(f"`{o}`" for o in [*option.opts, *option.secondary_opts])
        help_text = (option.help or "").replace("|", "\\|")
        default = ""
        if option.show_default is not False and option.default not in (None, False, (), []) and not option.is_flag:
            default = f" (default: `{option.default}`)"
        return f"| {names} | {help_text}{default} |"
    metavar = (param.name or "").upper()
    help_text = (getattr(param, "help", None) or "argument").replace("|", "\\|")
    return f"| `{metavar}` | {help_text}{'' if param.required else ' (optional)'} |"


def render() -> str:
    import typer.main

    from grappa_cli.cli.app import app, register_all
    from grappa_cli.cli.clickcompat import Context

    register_all()
    root = typer.main.get_command(app)
    ctx = Context(root, info_name="grappa")
    lines = [
        "# CLI reference",
        "",
        "Generated from the code by `python -m grappa_cli.cli.reference > docs/cli.md`; "
        "a test fails when this page is stale.",
        "",
    ]
    for path, command in _walk(root, [], ctx):
        title = " ".join(["grappa", *path])
        lines += [f"## `{title}`", ""]
        help_text = (command.help or "").strip()
        if help_text:
            lines += [help_text.split("\n\n")[0].replace("\n", " "), ""]
        params = [p for p in command.params if not getattr(p, "hidden", False) and p.name != "help"]
        if params:
            lines += ["| parameter | meaning |", "| --- | --- |"]
            lines += [_param_row(p) for p in params]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
