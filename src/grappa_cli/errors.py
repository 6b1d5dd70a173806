"""Exceptions that the CLI turns into one ``Error: ...`` line.

Every user-facing failure raises :class:`GrappaError` (or a subclass) whose message
already says how to fix the problem. The CLI prints it without a traceback (unless
``GRAPPA_DEBUG=1``) and exits with :attr:`GrappaError.exit_code`.
"""

from __future__ import annotations


class GrappaError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole one-line message."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text = f"{text}; {self.hint[0].lower()}{self.hint[1:]}"
        return text.rstrip(".") + "."


class UsageError(GrappaError):
    """Bad command-line usage (exit code 2, like click's own usage errors)."""

    exit_code = 2


class ConfigError(GrappaError):
    """``grappa.toml`` cannot be read, has an unknown key, a wrong type or an impossible value."""


class ProjectNotFound(GrappaError):
    """No project directory could be found (or the one named does not exist)."""


class ProjectLocked(GrappaError):
    """Another grappa process holds the project's write lock."""


class PluginError(GrappaError):
    """A plugin is unknown, duplicated or broken."""


class StoreError(GrappaError):
    """The feature store is missing a stage's output or holds artifacts from other inputs."""


class DataError(GrappaError):
    """A dataset root, image list or image file is unusable."""


class TrainingError(GrappaError):
    """Training diverged (NaN/inf loss) or cannot start with the given settings."""


class GrappaWarning(UserWarning):
    """Something the user should know that did not stop the command (printed as ``Warning: ...``)."""
