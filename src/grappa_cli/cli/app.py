"""The root ``grappa`` app: global options, command registration and the error wrapper.

Commands are registered through the ``register_commands`` hook, built-in ones included,
so ``grappa --help`` lists third-party commands too. Nothing here imports torch, timm,
faiss or zarr: command modules import those inside their function bodies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn, TextIO

import typer

from grappa_cli import __version__
from grappa_cli.cli.common import Flag

app = typer.Typer(
    name="grappa",
    help=(
        "Adapt a frozen pretrained image model to many retrieval tasks at once, without labels "
        "(Grappa, ECCV 2022): extract -> cluster -> adapt -> fuse -> eval."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"grappa {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    project: Annotated[
        Path | None,
        typer.Option("--project", "-C", help="Project directory (default: $GRAPPA_PROJECT, then the "
                     "nearest parent holding grappa.toml).", show_default=False),
    ] = None,
    version: Annotated[
        bool, Flag("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options."""
    ctx.obj = {"project": project}


_registered = False


def register_all() -> None:
    """Register every plugin's commands on the app (once)."""
    global _registered
    if _registered:
        return
    from grappa_cli.cli.examples import add_examples
    from grappa_cli.plugins import get_plugin_manager

    get_plugin_manager().hook.register_commands(cli=app)
    add_examples(app)
    _registered = True


def _print_error(message: str) -> None:
    from rich.markup import escape

    from grappa_cli.console import err

    err.print(f"[bold red]Error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def _show_grappa_warnings() -> None:
    """Print :class:`GrappaWarning` s as one ``Warning: ...`` line each (other warnings as Python does)."""
    import warnings

    from grappa_cli.errors import GrappaWarning

    original = getattr(warnings.showwarning, "__wrapped__", warnings.showwarning)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, GrappaWarning):
            from grappa_cli.console import warn

            warn(str(message))
        else:
            original(message, category, filename, lineno, file, line)

    show.__wrapped__ = original  # type: ignore[attr-defined]
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``grappa`` console script."""
    from grappa_cli.cli.clickcompat import Abort, ClickException, Exit
    from grappa_cli.errors import GrappaError

    debug = os.environ.get("GRAPPA_DEBUG") == "1"
    from grappa_cli.runtime import configure_cpu_threads, reuse_freed_memory

    if "torch" not in sys.modules:  # OpenMP reads these once, when torch loads
        configure_cpu_threads()
    reuse_freed_memory()  # training's large blocks are reused, not faulted in again every step
    _show_grappa_warnings()
    try:
        register_all()
        code = app(args=argv, prog_name="grappa", standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C into Exit(130) before it reaches us
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)  # typer.Exit(n) is returned, not raised, outside standalone mode
    except GrappaError as exc:
        if debug:
            raise
        _print_error(str(exc))
        sys.exit(exc.exit_code)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except (Abort, KeyboardInterrupt):
        _interrupted()
    except ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        from grappa_cli.storage.diskerrors import message

        text = message(exc)
        if debug or text is None:
            _unexpected(exc, debug)
        _print_error(text)
        sys.exit(1)
    except Exception as exc:
        _unexpected(exc, debug)


def _interrupted() -> None:
    """One line and exit 130; the event loop zarr runs must not log its cancelled writes on the way out."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    _settle_store_io()
    _print_error("interrupted; rerun the same command to resume.")
    sys.exit(130)


def _settle_store_io(timeout: float = 10.0) -> None:
    """Stop zarr's I/O event loop once the write it is in has ended.

    Ctrl-C reaches the main thread while it waits on that loop; exiting at once would leave
    the loop running, and zarr's exit hook would then print a traceback trying to close it.
    """
    sync = sys.modules.get("zarr.core.sync")
    if sync is None:
        return
    try:
        loop, thread = sync.loop[0], sync.iothread[0]
        sync._get_lock  # noqa: B018 (zarr internals this relies on)
    except (AttributeError, IndexError, TypeError):
        return
    if loop is None or thread is None or not thread.is_alive() or loop.is_closed():
        return
    with sync._get_lock():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            return
        loop.close()  # the next zarr call (in this process) starts a fresh loop
        sync.loop[0] = None
        sync.iothread[0] = None


def _unexpected(exc: Exception, debug: bool) -> NoReturn:
    if debug:
        raise exc
    _print_error(f"unexpected {type(exc).__name__}: {exc} (set GRAPPA_DEBUG=1 to see the traceback).")
    sys.exit(1)
