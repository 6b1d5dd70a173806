"""Render the ``grappa.toml`` reference page (docs/configuration.md) from the config schema.

``python -m grappa_cli.cli.config_reference > docs/configuration.md`` regenerates it; a test fails
when the committed page differs, so the reference cannot drift from :data:`grappa_cli.config.SCHEMA`
(every key, its type, default, allowed values and the paper's value).
"""

from __future__ import annotations

import json

from grappa_cli.config import CONFIG_NAME, SCHEMA, TASK_KEYS_DOC, FieldSpec

_INTRO = f"""# `{CONFIG_NAME}` reference

Every project holds one `{CONFIG_NAME}`; `grappa init` writes it with every key documented, and
the commands edit it keeping your comments (`grappa task add`). A key left out takes its default.
Unknown keys, wrong types and out-of-range values are refused with the file and key named.
This page is generated from the configuration schema (`grappa_cli.config.SCHEMA`).
"""


def _literal(value: object) -> str:
    """A default as it is written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_literal(v)}" for k, v in value.items())
        return "{" + (f" {inner} " if inner else "") + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(spec: FieldSpec) -> str:
    doc = spec.doc
    if spec.choices:
        doc += "; one of " + ", ".join(f"`{c}`" for c in spec.choices)
    paper = _cell(spec.paper) if spec.paper else "-"
    return f"| `{spec.name}` | {spec.kind} | `{_cell(_literal(spec.default))}` | {_cell(doc)} | {paper} |"


def render() -> str:
    """The whole page as Markdown."""
    lines = [_INTRO]
    for section, specs in SCHEMA.items():
        lines += [f"## `[{section}]`", "", "| key | type | default | meaning | paper |", "|---|---|---|---|---|"]
        lines += [_row(spec) for spec in specs]
        lines.append("")
    lines += [
        "## `[tasks.NAME]`",
        "",
        _cell(TASK_KEYS_DOC[0].upper() + TASK_KEYS_DOC[1:]) + ". Each reader's options are listed by "
        "`grappa plugins --all`; the image-folder reader (`type = \"imagefolder\"`) takes `split` "
        "(`classes`, `all-test`, `all-train`) and `layout` (`auto`: `ROOT/train` + `ROOT/test` as the "
        "two splits; `classes`: every sub-folder is a class).",
        "",
        "```toml",
        "[tasks.mydata]",
        'type = "imagefolder"',
        'root = "/data/my_images"',
        "```",
        "",
        "## Environment variables",
        "",
        "Settings of the process rather than of the project:",
        "",
        "| variable | meaning |",
        "|---|---|",
        *(f"| `{name}` | {meaning} |" for name, meaning in ENVIRONMENT),
        "",
    ]
    return "\n".join(lines)


#: The environment variables a user may set, and what each does.
ENVIRONMENT = (
    ("GRAPPA_PROJECT", "the project directory when `-C/--project` is not given (before the nearest "
                       "`grappa.toml` in the working directory or its parents)"),
    ("GRAPPA_PROGRESS", "`1` forces progress bars, `0` silences progress (default: bars on a terminal, a plain "
                        "line at most every 15 s elsewhere)"),
    ("OMP_NUM_THREADS", "torch's CPU threads; grappa sets one per usable core when it is unset (the thread count "
                        "orders floating-point sums, so it is recorded with every result)"),
    ("OMP_WAIT_POLICY", "with `GOMP_SPINCOUNT`, how waiting threads wait (time only, never a number); when both "
                        "are unset, grappa sets `GOMP_SPINCOUNT=10000` (spin briefly, then sleep) if the machine's "
                        "cores are free when it starts, else `OMP_WAIT_POLICY=PASSIVE` (sleep at once), which keeps "
                        "a loaded machine usable"),
    ("GOMP_SPINCOUNT", "see `OMP_WAIT_POLICY`; setting either leaves the waits to you"),
    ("GRAPPA_REUSE_MEMORY", "`0` leaves glibc's allocator as it is; by default freed large blocks stay in the heap "
                            "for the next training step instead of being faulted in again (training at 224 px about "
                            "1.7x faster on the CPU, its peak memory up to 1.5x; see the benchmarks page)"),
    ("GRAPPA_COMPILE", "`1` runs the models of extraction and evaluation through `torch.compile` (pays on GPUs)"),
    ("GRAPPA_DISABLE_PLUGINS", "comma-separated entry-point plugins not to load"),
    ("GRAPPA_LOAD_PLUGINS", "comma-separated entry-point plugins to load, no others (empty: none)"),
    ("GRAPPA_CHROMIUM", "the Chromium binary the report's browser check and screenshots use"),
    ("GRAPPA_DEBUG", "`1` prints the traceback of an error instead of its one line"),
)


#: Python type of each schema kind, as the configuration holds it after loading
_PY_TYPES = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list[int]": "list[int]",
             "list[str]": "list[str]", "table": "dict[str, object]", "k": "str | list[int]",
             "auto-list": "str | list[str]"}


def section_class(section: str) -> str:
    """``adapt`` -> ``AdaptSection``."""
    return "".join(part.capitalize() for part in section.split("_")) + "Section"


def render_sections() -> str:
    """``grappa_cli/config_sections.py``: one typed Protocol per section of the schema.

    ``GrappaConfig.adapt`` is an :class:`AdaptSection` to a type checker, so that
    ``config.adapt.lr`` is a ``float`` there; at run time the values come from the schema-checked
    ``Section`` (the Protocol only describes it).
    """
    lines = [
        '"""Typed views of the ``grappa.toml`` sections (generated from ``grappa_cli.config.SCHEMA``).',
        "",
        "Regenerate with ``python -m grappa_cli.cli.config_reference --sections >",
        "src/grappa_cli/config_sections.py``; a test fails when this file differs from the schema.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Protocol",
        "",
    ]
    for section, specs in SCHEMA.items():
        lines += ["", f"class {section_class(section)}(Protocol):", f'    """``[{section}]``."""', ""]
        lines.append("    values: dict[str, object]  # every key of the section, as loaded")
        lines += [f"    {spec.name}: {_PY_TYPES[spec.kind]}" for spec in specs]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    print(render_sections() if "--sections" in sys.argv[1:] else render(), end="")
