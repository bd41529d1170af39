"""Manifest rules, version ranges and hook priorities, without a daemon."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from cortexd.config.schema import Config, PluginsConfig
from cortexd.plugins.hooks import HookRegistry
from cortexd.plugins.manager import PluginManager
from cortexd.plugins.manifest import PluginError, check_trust, load_manifest, version_ok
from cortexd.plugins.runner import PluginCallFailed, call_plugin
from cortexd.server import Registry
from tests.plugins.conftest import COMMAND, GOOD_CHECK, HANGING, VETO, write_plugin


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        (">=0.1.0", True),
        (">=0.1.0,<1.0", True),
        ("<0.1", False),
        ("==0.1", True),
        ("~=0.1", True),
        (">=99", False),
        ("!=0.1.0", False),
    ],
)
def test_version_ranges(spec: str, ok: bool) -> None:
    assert version_ok(spec, "0.1.0") is ok


def test_an_unreadable_version_range_is_an_error() -> None:
    with pytest.raises(PluginError, match="cannot read"):
        version_ok(">= banana")


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, "p", GOOD_CHECK, plugin_type="widget")
    with pytest.raises(PluginError, match="plugin_type must be one of"):
        load_manifest(str(plugin))
    other = write_plugin(tmp_path, "q", GOOD_CHECK, main="../p/__init__.py")
    with pytest.raises(PluginError, match="outside the plugin directory"):
        load_manifest(str(other))


def test_trust_is_only_enforced_for_root(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, "p", GOOD_CHECK)
    os.chmod(plugin / "__init__.py", 0o666)
    check_trust(str(plugin), euid=1000)
    with pytest.raises(PluginError, match=r"__init__\.py is writable by group or others"):
        check_trust(str(plugin), euid=0)


def test_a_hanging_plugin_worker_is_killed_at_its_timeout(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, "h", HANGING)
    with pytest.raises(PluginCallFailed, match=r"timed out after 0\.5s"):
        call_plugin(str(plugin / "__init__.py"), "describe", {}, 0.5)


async def test_hooks_run_by_priority_and_isolate_failures() -> None:
    hooks = HookRegistry(timeout=0.5)
    order: list[str] = []

    def recorder(tag: str) -> Any:
        async def handler(payload: dict[str, Any]) -> str:
            order.append(tag)
            return tag

        return handler

    async def broken(payload: dict[str, Any]) -> None:
        raise ValueError("bug")

    hooks.add("post_check", recorder("low"), priority=-5, owner="a")
    hooks.add("post_check", broken, priority=100, owner="b")
    hooks.add("post_check", recorder("high"), priority=10, owner="c")
    assert await hooks.run("post_check", {}) == [None, "high", "low"]
    assert order == ["high", "low"]
    with pytest.raises(ValueError, match="unknown hook"):
        hooks.add("on_everything", broken)


async def test_plugins_go_by_their_manifest_name(tmp_path: Path) -> None:
    base = tmp_path / "plugins"
    write_plugin(base, "dir-a", COMMAND, plugin_type="command", name="renamed")
    write_plugin(base, "dir-b", COMMAND, plugin_type="command", name="renamed")
    config = Config(
        state_dir=str(tmp_path / "state"),
        plugins=PluginsConfig(directory=str(base), timeout_seconds=10),
    )
    registry = Registry()
    manager = PluginManager(config, registry, HookRegistry(), euid=os.geteuid())
    await manager.reload()
    by_dir = {os.path.basename(p["directory"]): p for p in manager.listing()["plugins"]}
    assert by_dir["dir-a"]["status"] == "loaded"
    assert by_dir["dir-b"]["status"] == "failed"
    assert "is named 'renamed'" in by_dir["dir-b"]["error"]
    assert registry.known("plugin.renamed.hello")
    await manager.set_enabled("renamed", False)
    by_dir = {os.path.basename(p["directory"]): p for p in manager.listing()["plugins"]}
    assert by_dir["dir-a"]["status"] == "disabled"
    write_plugin(base, "freeze", VETO)
    async with anyio.create_task_group() as tg:
        await manager.start(tg)
    assert manager.hooks.count("pre_fix") == 1
    await manager.stop()
    assert manager.hooks.count("pre_fix") == 0  # no plugin code runs after shutdown
