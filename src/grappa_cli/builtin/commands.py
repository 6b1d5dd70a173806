"""Built-in commands, registered through the same hook third-party plugins use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grappa_cli.hookspecs import hookimpl

if TYPE_CHECKING:
    import typer


@hookimpl
def register_commands(cli: typer.Typer) -> None:
    from grappa_cli.cli.pipeline import adapt, cache, cluster, extract, fuse, report, run, status
    from grappa_cli.cli.pipeline.eval import eval_command
    from grappa_cli.cli.serving import embed, export, search
    from grappa_cli.cli.setup import demo, init, plugins_cmd
    from grappa_cli.cli.setup.task import task_app

    cli.command("demo")(demo.demo)
    cli.command("init")(init.init)
    cli.add_typer(task_app, name="task")
    cli.command("extract")(extract.extract)
    cli.add_typer(cache.app, name="cache")
    cli.command("cluster")(cluster.cluster)
    cli.command("adapt")(adapt.adapt)
    cli.command("fuse")(fuse.fuse)
    cli.command("eval")(eval_command)
    cli.command("report")(report.report)
    cli.command("run")(run.run)
    cli.command("export")(export.export)
    cli.command("embed")(embed.embed)
    cli.command("index")(search.index)
    cli.command("search")(search.search)
    cli.command("status")(status.status)
    cli.command("plugins")(plugins_cmd.plugins)
