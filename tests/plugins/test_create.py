"""`cortexctl plugins create` writes a plugin that passes its own tests and loads."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from cortexctl.cli import main as cortexctl
from cortexd.config.schema import Config, PluginsConfig
from cortexd.notify.actions import ActionTypes
from cortexd.notify.rules import parse_rules
from cortexd.plugins.hooks import HookRegistry
from cortexd.plugins.manager import PluginManager
from cortexd.protocol import ConfigError
from cortexd.server import Registry


def create(tmp_path: Path, name: str, kind: str) -> Path:
    out = io.StringIO()
    # No daemon runs here: `create` must not need one.
    args = ["--socket", str(tmp_path / "none.sock"), "plugins", "create", name, "--type", kind]
    code = cortexctl([*args, "--directory", str(tmp_path), "--author", "ops"], stdout=out)
    assert code == 0, out.getvalue()
    assert f"created {tmp_path / name / 'plugin.yaml'}" in out.getvalue()
    return tmp_path / name


@pytest.mark.parametrize("kind", ["check", "command", "notifier"])
def test_the_scaffold_passes_its_own_tests(tmp_path: Path, kind: str) -> None:
    plugin = create(tmp_path, f"my-{kind}", kind)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=plugin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout


def test_creating_over_an_existing_plugin_fails(tmp_path: Path) -> None:
    create(tmp_path, "twice", "check")
    out = io.StringIO()
    # No daemon here either (never the machine's own socket).
    nobody = ["--socket", str(tmp_path / "none.sock")]
    args = [*nobody, "plugins", "create", "twice", "--directory", str(tmp_path)]
    assert cortexctl(args, stdout=out) == 1
    assert cortexctl(["plugins", "create", "Bad Name", "-d", str(tmp_path)], stdout=out) == 2


async def test_scaffolded_plugins_load_and_work(tmp_path: Path) -> None:
    base = tmp_path / "plugins"
    base.mkdir()
    create(base, "my-check", "check")
    create(base, "my-command", "command")
    create(base, "my-notifier", "notifier")
    config = Config(
        state_dir=str(tmp_path / "state"),
        plugins=PluginsConfig(directory=str(base), timeout_seconds=10),
    )
    registry = Registry()
    types = ActionTypes()
    manager = PluginManager(config, registry, HookRegistry(), euid=os.geteuid(), action_types=types)
    async with anyio.create_task_group() as tg:
        await manager.start(tg)
    status = {p["name"]: p["status"] for p in manager.listing()["plugins"]}
    assert status == {"my-check": "loaded", "my-command": "loaded", "my-notifier": "loaded"}
    [check] = manager.checks(config)
    [finding] = await anyio.to_thread.run_sync(check.collect)
    assert finding.status is not None
    assert finding.status.value in ("PASS", "WARN")
    assert registry.known("plugin.my-command.hello")

    # The notifier's action type checks rules and delivers through the worker.
    target = tmp_path / "alerts.jsonl"
    options: dict[str, str] = {"type": "my-notifier"}
    rules = {"alerts": [{"name": "all", "actions": [options]}]}
    with pytest.raises(ConfigError, match=r"actions\[0\]\.path': required"):
        parse_rules(rules, types=types)
    options["path"] = str(target)
    action = parse_rules(rules, types=types).actions["all.my-notifier"]
    added = types.get("my-notifier")
    assert added is not None
    event = {"kind": "firing", "alert": {"severity": "ERROR", "title": "disk full"}}
    answer = await anyio.to_thread.run_sync(added.send, action, event, 5, 10.0)
    assert str(target) in answer.text
    assert json.loads(target.read_text())["title"] == "disk full"
