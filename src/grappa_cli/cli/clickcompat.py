"""The click that Typer runs on.

Recent Typer releases vendor their own copy of click (``typer._click``); older ones use the
``click`` package. Exceptions and contexts must come from the copy Typer actually uses, or the
error wrapper would not recognise them.
"""

from __future__ import annotations

import typer

try:  # Typer >= 0.20 vendors click
    from typer._click import core as click_core
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer on the click package
    import click as click_core  # type: ignore[no-redef]
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

ClickException = click_exceptions.ClickException
Context = click_core.Context
Exit = typer.Exit
Abort = typer.Abort
