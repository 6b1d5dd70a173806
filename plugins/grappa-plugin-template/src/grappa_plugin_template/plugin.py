"""The plugin module named by the entry point: hook implementations only, imports kept light."""

from __future__ import annotations

from typing import Any

from grappa_cli.hookspecs import hookimpl


@hookimpl
def register_metrics(register: Any) -> None:
    from grappa_plugin_template.metrics import PrecisionAtK

    register(PrecisionAtK(10))


@hookimpl
def register_tasks(register: Any) -> None:
    from grappa_plugin_template.csv_task import CsvListTask

    register(CsvListTask())


@hookimpl
def register_commands(cli: Any) -> None:
    from grappa_plugin_template.command import csv_check

    cli.command("csv-check")(csv_check)
