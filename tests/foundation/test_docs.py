"""Documentation that must not drift from the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from grappa_cli import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hook_names() -> list[str]:
    return [
        name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "grappa_spec")
    ]


def test_every_hook_spec_is_documented() -> None:
    text = (DOCS / "plugins" / "hooks.md").read_text()
    headings = set(re.findall(r"^## (\w+)$", text, flags=re.M))
    names = set(hook_names())
    assert len(names) >= 6
    assert names <= headings, f"undocumented hooks: {sorted(names - headings)}"
    assert headings <= names, f"documented hooks that do not exist: {sorted(headings - names)}"


def test_cli_reference_is_current() -> None:
    from grappa_cli.cli.reference import render

    committed = (DOCS / "cli.md").read_text()
    assert committed == render(), "docs/cli.md is stale: run `python -m grappa_cli.cli.reference > docs/cli.md`"
