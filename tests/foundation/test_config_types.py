"""The typed view of the configuration: generated from the schema, current, and what loading gives."""

from __future__ import annotations

import types
import typing
from pathlib import Path

from grappa_cli import config_sections
from grappa_cli.cli.config_reference import render_sections, section_class
from grappa_cli.config import SCHEMA, GrappaConfig

SECTIONS_FILE = Path(config_sections.__file__)


def test_the_section_types_are_generated_from_the_schema() -> None:
    assert SECTIONS_FILE.read_text() == render_sections(), (
        "config_sections.py is stale: run `python -m grappa_cli.cli.config_reference --sections > "
        "src/grappa_cli/config_sections.py`")


def test_every_key_has_the_type_its_loaded_value_has() -> None:
    """For every key, the declared type admits the value a default configuration holds."""
    config = GrappaConfig.default()
    for section, specs in SCHEMA.items():
        hints = typing.get_type_hints(getattr(config_sections, section_class(section)))
        view = getattr(config, section)
        assert set(hints) == {"values", *(s.name for s in specs)}
        for spec in specs:
            value = getattr(view, spec.name)
            declared = hints[spec.name]
            union = typing.get_origin(declared) in (typing.Union, types.UnionType)
            allowed = typing.get_args(declared) if union else (declared,)
            assert any(isinstance(value, typing.get_origin(t) or t) for t in allowed), (section, spec.name, value)
    assert typing.get_type_hints(config_sections.AdaptSection)["lr"] is float
    returned = typing.get_type_hints(GrappaConfig.adapt.fget, localns={"sections_mod": config_sections})["return"]
    assert returned is config_sections.AdaptSection
