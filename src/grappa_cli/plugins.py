"""The plugin manager and the registries built from it.

Built-in plugins (``grappa_cli.builtin.*``) are registered exactly like third-party ones;
third-party plugins come from the ``grappa`` entry-point group. Environment variables:

* ``GRAPPA_DISABLE_PLUGINS=a,b``: do not load these entry-point plugins;
* ``GRAPPA_LOAD_PLUGINS=a,b``: load only these entry-point plugins (empty string: none).

Registering two things of one kind under the same name fails loudly, naming both plugins;
asking for an unknown name lists what is installed and suggests the closest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module, metadata
from typing import Any

import pluggy

from grappa_cli import hookspecs
from grappa_cli.errors import PluginError
from grappa_cli.suggest import did_you_mean

ENTRY_POINT_GROUP = "grappa"
ENV_DISABLE = "GRAPPA_DISABLE_PLUGINS"
ENV_ALLOW = "GRAPPA_LOAD_PLUGINS"

BUILTIN_MODULES = (
    "grappa_cli.builtin.backbones",
    "grappa_cli.builtin.fusion",
    "grappa_cli.builtin.tasks",
    "grappa_cli.builtin.metrics",
    "grappa_cli.builtin.commands",
    "grappa_cli.builtin.clusterers",
)

#: kind -> (hook name, words used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "backbones": ("register_backbones", "backbone"),
    "clusterers": ("register_clusterers", "clusterer"),
    "fusion_strategies": ("register_fusion_strategies", "fusion strategy"),
    "tasks": ("register_tasks", "task"),
    "metrics": ("register_metrics", "metric"),
}


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


@dataclass
class PluginInfo:
    """One loaded plugin as ``grappa plugins`` shows it."""

    name: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)


@cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built-ins and entry points loaded."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_MODULES:
        pm.register(import_module(module_name), name=module_name)
    _load_entry_points(pm)
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    disabled = _env_names(ENV_DISABLE) or set()
    allowed = _env_names(ENV_ALLOW)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in disabled or (allowed is not None and ep.name not in allowed):
            pm.set_blocked(ep.name)
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down silently
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}",
                hint=f"fix or uninstall it, or set {ENV_DISABLE}={ep.name}",
            ) from exc
        pm.register(plugin, name=ep.name)
        dist = getattr(ep, "dist", None)
        if dist is not None:
            _DISTS[ep.name] = (dist.metadata["Name"], dist.version)


_DISTS: dict[str, tuple[str, str]] = {}


class Registry:
    """Named objects of one kind, collected from every plugin's hook."""

    def __init__(self, kind: str, items: dict[str, Any], owners: dict[str, str]) -> None:
        self.kind = kind
        self.items = items
        self.owners = owners

    @property
    def word(self) -> str:
        return KINDS[self.kind][1]

    def names(self) -> list[str]:
        return sorted(self.items)

    def __contains__(self, name: str) -> bool:
        return name in self.items

    def get(self, name: str) -> Any:
        try:
            return self.items[name]
        except KeyError:
            installed = ", ".join(self.names()) or "none"
            raise PluginError(
                f"unknown {self.word} {name!r}{did_you_mean(name, self.items)}; installed: {installed}",
                hint="see `grappa plugins`",
            ) from None


def collect(kind: str, pm: pluggy.PluginManager | None = None) -> Registry:
    """Call every plugin's ``register_<kind>`` hook, attributing each item to its plugin."""
    pm = pm or get_plugin_manager()
    hook_name, word = KINDS[kind]
    items: dict[str, Any] = {}
    owners: dict[str, str] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # in registration order
        owner = impl.plugin_name

        def register(obj: object, _owner: str = owner) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_owner!r} registered a {word} without a `name`")
            if name in items:
                raise PluginError(
                    f"{word} {name!r} is registered twice: by plugin {owners[name]!r} and by {_owner!r}",
                    hint=f"uninstall one of them or block it with {ENV_DISABLE}",
                )
            items[name] = obj
            owners[name] = _owner

        impl.function(register=register)
    return Registry(kind, items, owners)


def registry(kind: str) -> Registry:
    """The registry of one kind for the process-wide plugin manager."""
    return collect(kind)


def get(kind: str, name: str) -> Any:
    """Shortcut: ``get("clusterers", "faiss")``."""
    return registry(kind).get(name)


def describe_plugins(*, include_builtin: bool) -> list[PluginInfo]:
    """What each loaded plugin is and registers (for ``grappa plugins``)."""
    from grappa_cli import __version__

    pm = get_plugin_manager()
    registries = {kind: collect(kind, pm) for kind in KINDS}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked by GRAPPA_DISABLE_PLUGINS / GRAPPA_LOAD_PLUGINS
            continue
        builtin = name in BUILTIN_MODULES
        if builtin and not include_builtin:
            continue
        hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
        registers = {
            kind: sorted(n for n, owner in reg.owners.items() if owner == name)
            for kind, reg in registries.items()
        }
        registers = {k: v for k, v in registers.items() if v}
        if builtin:
            display, version = name, __version__
        else:
            display, version = _DISTS.get(name, (name, getattr(plugin, "__version__", "?")))
            display = name if display == name else f"{name} ({display})"
        infos.append(PluginInfo(display, version, builtin, hooks, registers))
    return infos
