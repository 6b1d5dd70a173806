"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s docs``.

The sessions run in the current environment (``venv_backend="none"``): the project pulls in
torch, and installing it again per session would cost minutes for nothing. Install first
with ``pip install -e ".[dev]"``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests", "docs"]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The test suite (pass pytest arguments after --)."""
    session.run("pytest", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff over sources, tests, benchmarks and plugin packages."""
    session.run("ruff", "check", "src", "tests", "benchmarks", "plugins", "noxfile.py")


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Build the documentation site with --strict (warnings are errors)."""
    session.run("python", "-m", "grappa_cli.cli.reference", stdout=open("docs/cli.md", "w"))  # noqa: SIM115
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})
