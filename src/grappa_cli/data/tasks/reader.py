"""Shared behaviour of the built-in task readers: option checking and the ``split`` option."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, cast

from grappa_cli.data.tasks.base import TaskSplits
from grappa_cli.data.tasks.split import SPLIT_CHOICES
from grappa_cli.errors import DataError
from grappa_cli.suggest import did_you_mean


class BaseReader:
    """A task reader with documented options (``[tasks.NAME]`` keys besides ``type``/``root``).

    Subclasses set ``name``, ``description``, ``options`` (name -> (default, doc)) and
    implement :meth:`read` with validated options.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[dict[str, tuple[object, str]]] = {
        "split": ("classes", "classes (alphabetical halves, the paper's split), all-test or all-train"),
    }
    split_choices: ClassVar[tuple[str, ...]] = SPLIT_CHOICES

    def load(self, root: Path, **options: object) -> TaskSplits:
        return self.read(Path(root), **self.resolve_options(options))

    def read(self, root: Path, **options: object) -> TaskSplits:
        raise NotImplementedError

    def resolve_options(self, options: Mapping[str, object]) -> dict[str, object]:
        """Options with defaults filled in; unknown keys and bad ``split`` values fail."""
        for key in options:
            if key not in self.options:
                known = ", ".join(sorted(self.options)) or "none"
                raise DataError(
                    f"task type {self.name!r} has no option {key!r}{did_you_mean(key, self.options)}; "
                    f"its options: {known}",
                    hint="remove it from the task's table in grappa.toml",
                )
        values = {key: options.get(key, default) for key, (default, _) in self.options.items()}
        split = values.get("split")
        if split is not None and split not in self.split_choices:
            raise DataError(
                f"task type {self.name!r}: split must be one of "
                f"{', '.join(self.split_choices)} (got {split!r})"
            )
        return values

    def has_test(self, **options: object) -> bool:
        """Whether :meth:`load` returns a test split for these options (without reading data)."""
        return self.resolve_options(options).get("split") != "all-train"

    @staticmethod
    def split_of(options: Mapping[str, object]) -> str:
        """The ``split`` option of resolved options (:meth:`resolve_options` checked it is a choice)."""
        return cast("str", options["split"])
