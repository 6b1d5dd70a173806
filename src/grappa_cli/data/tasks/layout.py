"""Finding a dataset inside the root a user gives, with errors that name the expected file.

torchvision's readers look for a fixed folder under their ``root`` (``ROOT/flowers-102/``,
``ROOT/food-101/``, ...). Users point grappa either at that folder or at its parent; both
are accepted when the folder names match. A folder with the right files under another
name is refused with the rename/link to do, because torchvision cannot be told the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grappa_cli.errors import DataError


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files live: a chain of folder names and the files inside the last.

    ``markers`` are paths relative to the innermost folder; a trailing ``/`` marks a
    directory. ``any_name`` accepts the innermost folder under any name (grappa's own
    readers); torchvision-backed readers need the exact names.
    """

    dataset: str
    folders: tuple[str, ...]
    markers: tuple[str, ...]
    any_name: bool = False

    def expected(self, base: Path) -> str:
        inner = base.joinpath(*self.folders)
        return ", ".join(str(inner / m) for m in self.markers)


@dataclass(frozen=True)
class Located:
    """``parent`` holds ``folders`` (what torchvision's ``root`` is); ``directory`` is the dataset."""

    parent: Path
    directory: Path


def _present(base: Path, marker: str) -> bool:
    path = base / marker.rstrip("/")
    return path.is_dir() if marker.endswith("/") else path.is_file()


def _missing(directory: Path, layout: Layout) -> list[str]:
    return [m for m in layout.markers if not _present(directory, m)]


def locate(root: Path | str, layout: Layout) -> Located:
    """Resolve the user's ``root`` (dataset folder or its parent) or raise a :class:`DataError`."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{layout.dataset} root {root} does not exist", hint="check the path given as root")
    if not root.is_dir():
        raise DataError(f"{layout.dataset} root {root} is not a directory", hint="give the dataset's folder")
    root = root.resolve()
    folders = layout.folders
    candidates: list[Located] = []
    # root is the parent of the chain, or sits i levels down the chain with matching names.
    for depth in range(len(folders) + 1):
        if depth and tuple(root.parts[-depth:]) != folders[:depth]:
            continue
        parent = root.parents[depth - 1] if depth else root
        candidates.append(Located(parent, parent.joinpath(*folders)))
    if layout.any_name and root.name != folders[-1]:
        candidates.append(Located(root.parent, root))
    partial: tuple[Located, list[str]] | None = None
    for cand in candidates:
        if not cand.directory.is_dir():
            continue
        missing = _missing(cand.directory, layout)
        if not missing:
            return cand
        if partial is None or len(missing) < len(partial[1]):
            partial = (cand, missing)
    if partial is not None and len(partial[1]) < len(layout.markers):
        cand, missing = partial
        raise DataError(
            f"the {layout.dataset} dataset at {cand.directory} is incomplete: missing "
            + ", ".join(str(cand.directory / m) for m in missing),
            hint="re-extract the dataset archive there",
        )
    if not layout.any_name and not _missing(root, layout):
        chain = "/".join(folders)
        raise DataError(
            f"{root} holds the {layout.dataset} files, but torchvision's reader needs them at "
            f"PARENT/{chain}/ (found the folder named {root.name!r})",
            hint=f"link it (mkdir -p NEW/{'/'.join(folders[:-1])} && ln -s {root} NEW/{chain}) "
            "and give NEW as the root"
            if len(folders) > 1
            else f"rename it to {chain}, or link it (mkdir NEW && ln -s {root} NEW/{chain}) "
            "and give NEW as the root",
        )
    inner = "/".join(folders)
    raise DataError(
        f"no {layout.dataset} dataset at {root}: expected {layout.expected(root)} "
        f"(root = the folder holding {inner}/) or the same files directly under {root} "
        f"(root = the {folders[-1]} folder itself)",
        hint="check the dataset root",
    )
