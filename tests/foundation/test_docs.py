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


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is generated from the schema; every key appears with its default."""
    from grappa_cli.cli.config_reference import _literal, render
    from grappa_cli.config import SCHEMA

    page = render()
    for section, specs in SCHEMA.items():
        assert f"## `[{section}]`" in page
        for spec in specs:
            assert f"| `{spec.name}` | {spec.kind} | `{_literal(spec.default)}` |" in page, (section, spec.name)
    committed = (DOCS / "configuration.md").read_text()
    assert committed == page, (
        "docs/configuration.md is stale: run `python -m grappa_cli.cli.config_reference > docs/configuration.md`"
    )


def test_dependency_metadata() -> None:
    """Floors that the code needs, huggingface_hub declared, plugins pinned below the next minor."""
    import tomllib

    root = DOCS.parent
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {d.split(">")[0].split("<")[0].split("=")[0].strip(): d for d in deps}
    assert by_name["timm"] == "timm>=1.0.26"  # the ViT blocks take attn_mask and is_causal
    assert "huggingface_hub" in by_name
    for plugin in ("grappa-hkmeans", "grappa-plugin-template"):
        plugin_deps = tomllib.loads((root / "plugins" / plugin / "pyproject.toml").read_text())["project"]
        grappa = [d for d in plugin_deps["dependencies"] if d.startswith("grappa-cli")]
        assert grappa == ["grappa-cli>=0.1,<0.2"], plugin


def test_timm_accepts_what_the_vit_backbone_passes() -> None:
    """The installed timm's ViT block takes the keyword arguments model/backbones/vit.py passes (the floor's reason)."""
    import inspect

    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    for method in (Block.forward, Attention.forward, VisionTransformer.forward_features):
        parameters = inspect.signature(method).parameters
        assert "attn_mask" in parameters and "is_causal" in parameters, method.__qualname__
