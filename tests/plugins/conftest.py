"""Plugin directories written by the tests: good ones and every kind of bad one."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "config" / "plugins" / "port_check"


def write_plugin(
    base: Path, dirname: str, code: str, *, plugin_type: str = "check", **manifest: Any
) -> Path:
    """A plugin directory with a manifest and an `__init__.py`, root-safe modes."""
    path = base / dirname
    path.mkdir(parents=True)
    data = {
        "name": dirname,
        "version": "1.0.0",
        "description": f"test plugin {dirname}",
        "author": "tests",
        "plugin_type": plugin_type,
        "main": "__init__.py",
        "cortex_version": ">=0.1.0",
        **manifest,
    }
    (path / "plugin.yaml").write_text(yaml.safe_dump(data))
    (path / "__init__.py").write_text(code)
    for item in (path, path / "plugin.yaml", path / "__init__.py"):
        os.chmod(item, 0o755 if item.is_dir() else 0o644)
    return path


def copy_example(base: Path, port: int) -> Path:
    """The shipped port_check example, pointed at `port`."""
    target = base / "port_check"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = yaml.safe_load((target / "plugin.yaml").read_text())
    manifest["settings"].update({"service": "test-service", "port": port})
    (target / "plugin.yaml").write_text(yaml.safe_dump(manifest))
    for item in (target, *target.iterdir()):
        os.chmod(item, 0o755 if item.is_dir() else 0o644)
    return target


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP service on loopback; yields its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


COMMAND = """
COMMANDS = {"hello": lambda params: {"greeting": "Hello, " + params.get("name", "World") + "!"}}
"""
RAISING = """
def check(settings):
    raise RuntimeError("the plugin's own bug")
"""
BAD_IMPORT = "import module_that_does_not_exist\n"
HANGING = "import time\ntime.sleep(3600)\n"
VETO = """
def pre_fix(payload):
    return "plugin says no to " + payload["fix_id"]

def check(settings):
    return {"status": "PASS", "message": "ok"}

HOOKS = {"pre_fix": pre_fix}
HOOK_PRIORITIES = {"pre_fix": 50}
"""
GOOD_CHECK = """
def check(settings):
    print("plugins may print; it must not corrupt the answer")
    return {"status": "WARN", "message": "answer " + str(settings.get("answer"))}
"""
