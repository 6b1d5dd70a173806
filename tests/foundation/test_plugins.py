"""The plugin system: entry points, registries, duplicates, unknown names, env controls."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pluggy
import pytest

from grappa_cli import plugins
from grappa_cli.errors import PluginError
from grappa_cli.hookspecs import hookimpl
from tests.conftest import run_subprocess

FAKE = Path(__file__).parent / "fake_plugin"


def install_fake_distribution(site: Path, *, name: str, module: str, version: str = "0.3.1") -> None:
    """Make ``module`` an installed distribution with a ``grappa`` entry point, as pip would.

    importlib.metadata discovers ``*.dist-info`` directories on sys.path, so putting ``site``
    on PYTHONPATH makes the entry point real for a fresh interpreter.
    """
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAKE / f"{module}.py", site / f"{module}.py")
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[grappa]\n{name} = {module}\n")
    (dist / "RECORD").write_text("")


@pytest.fixture
def fake_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    install_fake_distribution(site, name="grappa-fake", module="grappa_fake_plugin")
    return site


#: The test session loads built-ins only; these tests load installed plugins again.
ALL_PLUGINS = {"GRAPPA_LOAD_PLUGINS": None}


def _plugins_json(env: dict[str, str | None], *args: str) -> list[dict]:
    proc = run_subprocess("plugins", "--json", *args, env={**ALL_PLUGINS, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_entry_point_plugin_listed_with_version_and_clusterer(fake_site: Path) -> None:
    infos = _plugins_json({"PYTHONPATH": str(fake_site)})
    fake = [i for i in infos if i["name"].startswith("grappa-fake")]
    assert len(fake) == 1
    assert fake[0]["version"] == "0.3.1"
    assert fake[0]["registers"] == {"clusterers": ["farthest"]}
    assert not fake[0]["builtin"]


def test_builtins_listed_only_with_all(fake_site: Path) -> None:
    env = {"PYTHONPATH": str(fake_site)}
    assert all(not i["builtin"] for i in _plugins_json(env))
    everything = _plugins_json(env, "--all")
    assert any(i["builtin"] and "grappa_cli.builtin.commands" in i["name"] for i in everything)


def test_disable_and_allow_list(fake_site: Path) -> None:
    base = {"PYTHONPATH": str(fake_site)}
    # disabling names one distribution: it is gone (other installed plugin packages may stay)
    remaining = _plugins_json({**base, "GRAPPA_DISABLE_PLUGINS": "grappa-fake"})
    assert not [i for i in remaining if "grappa-fake" in i["name"]]
    assert [i for i in _plugins_json(base) if "grappa-fake" in i["name"]]  # and it is there otherwise
    assert not [i for i in _plugins_json({**base, "GRAPPA_LOAD_PLUGINS": ""}) if not i["builtin"]]
    allowed = _plugins_json({**base, "GRAPPA_LOAD_PLUGINS": "grappa-fake"})
    assert [i["version"] for i in allowed if not i["builtin"]] == ["0.3.1"]


def test_duplicate_names_fail_loudly(fake_site: Path) -> None:
    install_fake_distribution(fake_site, name="grappa-dup", module="grappa_fake_duplicate")
    proc = run_subprocess("plugins", env={**ALL_PLUGINS, "PYTHONPATH": str(fake_site)})
    assert proc.returncode == 1
    assert "clusterer 'farthest' is registered twice" in proc.stderr
    assert "grappa-fake" in proc.stderr and "grappa-dup" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_broken_plugin_names_itself(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "grappa_broken.py").write_text("raise ImportError('needs libfoo')\n")
    dist = site / "grappa_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: grappa-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[grappa]\nbroken = grappa_broken\n")
    proc = run_subprocess("plugins", env={**ALL_PLUGINS, "PYTHONPATH": str(site)})
    assert proc.returncode == 1
    assert "plugin 'broken'" in proc.stderr and "GRAPPA_DISABLE_PLUGINS=broken" in proc.stderr
    ok = run_subprocess("plugins", env={**ALL_PLUGINS, "PYTHONPATH": str(site),
                                        "GRAPPA_DISABLE_PLUGINS": "broken"})
    assert ok.returncode == 0, ok.stderr


def test_the_test_session_ignores_installed_plugins(tmp_path: Path) -> None:
    """With the project's template plugin installed, the suite still sees the built-ins alone."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    site = tmp_path / "site"
    dist = site / "grappa_plugin_template-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: grappa-plugin-template\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[grappa]\ntemplate = grappa_plugin_template.plugin\n")
    (dist / "RECORD").write_text("")
    path = os.pathsep.join([str(site), str(repo / "plugins" / "grappa-plugin-template" / "src"), str(repo),
                            *sys.path])
    code = ("import tests.conftest\n"  # what every test session imports first
            "from grappa_cli import plugins\n"
            "print(','.join(plugins.registry('metrics').names()))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPPA_")}
    env["PYTHONPATH"] = path
    seen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert seen.returncode == 0, seen.stderr
    assert "precision@10" not in seen.stdout.split(",")
    installed = run_subprocess("plugins", "--json", env={**ALL_PLUGINS, "PYTHONPATH": path})
    assert any(i["name"].startswith("template") for i in json.loads(installed.stdout)), installed.stdout


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


class _PluginA:
    @hookimpl
    def register_clusterers(self, register):
        register(_Named("alpha"))
        register(_Named("faiss-like"))


class _PluginB:
    @hookimpl
    def register_clusterers(self, register):
        register(_Named("alpha"))


@pytest.fixture
def pm():
    from grappa_cli import hookspecs

    manager = pluggy.PluginManager("grappa")
    manager.add_hookspecs(hookspecs)
    return manager


def test_registry_attributes_items_to_plugins(pm) -> None:
    pm.register(_PluginA(), name="plugin-a")
    reg = plugins.collect("clusterers", pm)
    assert reg.names() == ["alpha", "faiss-like"]
    assert reg.owners == {"alpha": "plugin-a", "faiss-like": "plugin-a"}


def test_registry_duplicate_raises_naming_both(pm) -> None:
    pm.register(_PluginA(), name="plugin-a")
    pm.register(_PluginB(), name="plugin-b")
    with pytest.raises(PluginError, match="'alpha' is registered twice: by plugin 'plugin-a' and by 'plugin-b'"):
        plugins.collect("clusterers", pm)


def test_unknown_name_suggests_closest(pm) -> None:
    pm.register(_PluginA(), name="plugin-a")
    reg = plugins.collect("clusterers", pm)
    with pytest.raises(PluginError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert "unknown clusterer 'alpah'" in message
    assert "did you mean 'alpha'" in message
    assert "installed: alpha, faiss-like" in message


def test_register_without_name_is_rejected(pm) -> None:
    class Bad:
        @hookimpl
        def register_clusterers(self, register):
            register(object())

    pm.register(Bad(), name="bad")
    with pytest.raises(PluginError, match="without a `name`"):
        plugins.collect("clusterers", pm)
