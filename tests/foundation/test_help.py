"""Every command's --help as users see it (through Rich): nothing lost, examples, completion."""

from __future__ import annotations

import re

import pytest

from grappa_cli.cli.app import app, register_all


def commands() -> list[tuple[list[str], object]]:
    """(path, click command) of every command and sub-command."""
    import typer.main

    from grappa_cli.cli.clickcompat import Context

    register_all()
    root = typer.main.get_command(app)
    found = []

    def walk(command, path):
        found.append((path, command))
        if hasattr(command, "list_commands"):
            ctx = Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name])

    walk(root, [])
    return found


def squash(text: str) -> str:
    """Text without box drawing, line breaks and runs of spaces (Rich wraps help into panels)."""
    return re.sub(r"[\s│╭╮╰╯─]+", "", text)


def render_help(cli, path: list[str]) -> str:
    result = cli(*path, "--help", env={"COLUMNS": "100", "TERM": "dumb"})
    assert result.exit_code == 0, (path, result.stderr)
    return result.stdout


COMMANDS = commands()


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "grappa" for p, _ in COMMANDS])
def test_help_keeps_every_bracketed_text(cli, path, command) -> None:
    """Rich reads ``[word]`` as markup and drops it; every ``[...]`` written in help must survive."""
    shown = squash(render_help(cli, path))
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    for text in texts:
        for bracketed in re.findall(r"\[[^\]]*\]", text.replace("\\[", "[")):
            assert squash(bracketed) in shown, f"`grappa {' '.join(path)} --help` lost {bracketed!r}"


LEAVES = [(p, c) for p, c in COMMANDS if p and not hasattr(c, "list_commands")]


@pytest.mark.parametrize("path,command", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_command_shows_examples_that_parse(cli, path, command) -> None:
    """An Examples section whose command lines use only options the command has."""
    from grappa_cli.cli.examples import EXAMPLES

    text = render_help(cli, path)
    assert "Examples" in text, f"`grappa {' '.join(path)} --help` has no examples"
    examples = EXAMPLES[" ".join(path)]
    root_options = {"-C", "--project"}
    known = {opt for p in command.params for opt in [*p.opts, *p.secondary_opts]} | root_options
    for line, _ in examples:
        assert line.split()[0] == "grappa", line
        assert squash(line) in squash(text), line
        words = line.split()[1:]
        while words and words[0] in root_options:
            words = words[2:]
        assert words[: len(path)] == path, line
        for word in words[len(path):]:
            if word.startswith("-"):
                assert word in known, f"{line!r}: {word} is no option of `grappa {' '.join(path)}`"


def test_shell_completion_is_offered(cli) -> None:
    text = render_help(cli, [])
    assert "--install-completion" in text and "--show-completion" in text


def test_help_is_not_lost_for_the_device_option(cli) -> None:
    shown = render_help(cli, ["extract"])
    assert "runtime.device" in squash(shown) or "[runtime]" in shown


def test_until_choices_are_the_pipeline_stages(cli) -> None:
    """``grappa run --until`` refuses a name that is not a stage, listing exactly the pipeline's stages in order."""
    from grappa_cli.pipeline.run import STAGES

    result = cli("run", "--until", "nope")
    assert result.exit_code == 2
    offered = re.findall(r"'([a-z]+)'", squash(result.stdout + result.stderr).split("isnotoneof", 1)[1])
    assert tuple(offered) == STAGES
