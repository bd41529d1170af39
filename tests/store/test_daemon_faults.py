"""Bad databases at start, in the real daemon: each store damaged, locked or read-only.

A damaged file is moved aside and the daemon serves on a fresh one, with a
CRITICAL alert (stored in the fresh alerts database even when that is the
one replaced, and notified) and `cortexctl doctor` naming the file. A file
that cannot be opened leaves only its own component `failed`, with the
reason; an unusable state directory stops the daemon with exit status 1.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cortexctl.client import Client
from cortexd.config.schema import ChecksConfig
from cortexd.protocol import CortexError, ErrorCode
from cortexd.store.db import BUSY_TIMEOUT_MS
from tests.daemon import DaemonProcess, running_daemon, short_tmpdir, spawn
from tests.notify.helpers import Receiver, receiver

WAIT = 30.0
GARBAGE = b"not a database at all\n" * 200
# The store of each component and a read that needs it.
STORES = {
    "alerts": ("alerts.db", "alerts.list", {}),
    "notify": ("notify.db", "notify.history", {"since": 0}),
    "repair": ("repair.db", "fixes.history", {}),
}
# The damaged file's name as moved aside: NAME.db.corrupt-<UTC stamp>.
MOVED = r"\.corrupt-\d{8}T\d{6}Z$"


def wait_for(predicate: Callable[[], Any], what: str, within: float = WAIT) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def config(state: Path, hook: Receiver | None = None) -> dict[str, Any]:
    checks: dict[str, Any] = {f.name: {"enabled": False} for f in dataclasses.fields(ChecksConfig)}
    checks["cortex_databases"] = {"interval_seconds": 1}
    cfg: dict[str, Any] = {"state_dir": str(state), "checks": checks}
    if hook is not None:
        rules = state.parent / "alerts.yaml"
        rule = {
            "name": "storage",
            "check": "cortex_databases",
            "actions": [{"type": "webhook", "url": hook.url()}],
        }
        rules.write_text(yaml.safe_dump({"alerts": [rule]}))
        cfg["notify"] = {"rules_path": str(rules)}
    return cfg


def cortexctl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", d.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def error_of(d: DaemonProcess, method: str, params: dict[str, Any]) -> CortexError:
    with Client(d.socket_path, timeout=WAIT) as client:
        try:
            client.call(method, params)
        except CortexError as exc:
            return exc
    raise AssertionError(f"{method} answered ok")


@pytest.fixture
def state() -> Iterator[Path]:
    where = Path(short_tmpdir("cxst")) / "state"
    where.mkdir()
    yield where
    subprocess.run(["rm", "-rf", str(where.parent)], check=False)


@pytest.mark.parametrize("component", list(STORES))
def test_a_damaged_database_is_moved_aside_and_the_daemon_serves(
    component: str, state: Path
) -> None:
    name, method, params = STORES[component]
    (state / name).write_bytes(GARBAGE)
    (state / f"{name}-wal").write_bytes(b"a log that belongs to the damaged file")
    with receiver() as hook, running_daemon(config(state, hook)) as d:
        [moved] = [p for p in state.iterdir() if re.fullmatch(re.escape(name) + MOVED, p.name)]
        assert moved.read_bytes() == GARBAGE
        assert Path(f"{moved}-wal").read_bytes() == b"a log that belongs to the damaged file"
        # A fresh database serves in its place.
        assert d.call("ping")["pong"] is True
        d.call(method, params)
        status = d.call("status")["components"][component]
        assert status["state"] == "running"
        [quarantined] = status["storage"]["quarantined"]
        assert quarantined["moved_to"] == str(moved)
        assert "not a database" in quarantined["reason"]
        assert f"{state / name} is damaged (file is not a database): moved aside to {moved}" in (
            d.log()
        )

        def alert() -> dict[str, Any] | None:
            listed = d.call("alerts.list", {"state": "all"})["alerts"]
            return next((a for a in listed if a["labels"].get("file") == moved.name), None)

        raised = wait_for(alert, "the CRITICAL alert")
        assert raised["severity"] == "CRITICAL"
        assert raised["source"] == "cortex_databases"
        assert moved.name in raised["title"]
        assert f"{name} was damaged and moved aside to {moved}" in raised["description"]
        # Notified, also when the alerts database itself was the one replaced.
        [post] = hook.wait_for(1)
        assert post.json()["alerts"][0]["labels"]["file"] == moved.name

        doctor = cortexctl(d, "doctor", "--check", "cortex_databases")
        assert doctor.returncode == 2, doctor.stdout + doctor.stderr
        assert str(moved) in doctor.stdout
        assert "cortexctl restore" in doctor.stdout

        # Once the operator has dealt with the file, the check passes and the alert resolves.
        for path in state.glob(f"{moved.name}*"):
            path.unlink()
        doctor = cortexctl(d, "doctor", "--check", "cortex_databases")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        resolved = d.call("alerts.get", {"id": raised["id"]})["alert"]
        assert resolved["state"] == "resolved"


@pytest.fixture
def lock_holder() -> Iterator[Callable[[Path], None]]:
    """Starts a process that holds an exclusive lock on a database until the test ends."""
    holders: list[subprocess.Popen[bytes]] = []

    def hold(path: Path) -> None:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys\n"
                "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "c.execute('CREATE TABLE IF NOT EXISTS other (x)')\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n",
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        holders.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"locked\n"

    yield hold
    for proc in holders:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


@pytest.mark.parametrize("component", list(STORES))
def test_a_database_locked_by_another_process_fails_only_its_component(
    component: str, state: Path, lock_holder: Callable[[Path], None]
) -> None:
    name, method, params = STORES[component]
    lock_holder(state / name)
    with running_daemon(config(state)) as d:
        components = d.call("status")["components"]
        failed = components[component]
        assert failed["state"] == "failed"
        assert failed["reason"] == f"{name}: locked by another process"
        assert failed["storage"] == {
            "file": name,
            "state": "failed",
            "reason": "locked by another process",
        }
        others = {n: c["state"] for n, c in components.items() if n in STORES and n != component}
        assert set(others.values()) == {"running"}, others
        # The component's calls answer at once, with the reason; nothing waits on the lock.
        started = time.monotonic()
        exc = error_of(d, method, params)
        assert time.monotonic() - started < BUSY_TIMEOUT_MS / 1000
        assert exc.code == ErrorCode.UNAVAILABLE
        assert exc.message == f"{name} is unavailable: locked by another process"
        assert d.call("ping")["pong"] is True
        shown = cortexctl(d, "status")
        assert re.search(
            rf"{component} +failed \({re.escape(name)}: locked by another process\)", shown.stdout
        ), shown.stdout
        if component != "alerts":
            d.call("alerts.raise", {"title": "still watching"})
        # The file was another process's to keep: not moved aside.
        assert not list(state.glob("*.corrupt-*"))


def read_only_file_command(path: Path) -> tuple[list[str] | None, str]:
    """How to start a daemon that cannot write `path`, and the reason it will give."""
    if os.geteuid() == 0:
        # Root writes through any mode bits: a read-only bind mount of the
        # one file, in a mount namespace of the daemon's own.
        script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        return [*command, str(path), sys.executable, "-m", "cortexd"], "read-only file system"
    path.chmod(stat.S_IRUSR)
    return None, "Permission denied"


@pytest.mark.parametrize("component", list(STORES))
def test_a_database_that_cannot_be_written_fails_only_its_component(
    component: str, state: Path
) -> None:
    name, method, params = STORES[component]
    conn = sqlite3.connect(state / name)
    conn.execute("CREATE TABLE other (x)")
    conn.close()
    command, reason = read_only_file_command(state / name)
    with running_daemon(config(state), command=command) as d:
        components = d.call("status")["components"]
        assert components[component]["state"] == "failed"
        assert components[component]["reason"] == f"{name}: {reason}"
        others = {n: c["state"] for n, c in components.items() if n in STORES and n != component}
        assert set(others.values()) == {"running"}, others
        exc = error_of(d, method, params)
        assert exc.message == f"{name} is unavailable: {reason}"
        assert d.call("ping")["pong"] is True
        assert not list(state.glob("*.corrupt-*"))


def test_a_state_directory_that_is_not_a_directory_stops_the_daemon(state: Path) -> None:
    state.rmdir()
    state.write_text("a file where the state directory should be\n")
    workdir = short_tmpdir()
    try:
        cfg = {
            "state_dir": str(state),
            "server": {"socket_path": os.path.join(workdir, "c.sock")},
            "logging": {"level": "INFO", "target": "stderr"},
            "notify": {"rules_path": os.path.join(workdir, "alerts.yaml")},
            "plugins": {"directory": os.path.join(workdir, "plugins")},
        }
        proc, notify, _config_path, log_path = spawn(workdir, cfg)
        try:
            assert proc.wait(WAIT) == 1
        finally:
            notify.close()
        log = Path(log_path).read_text()
        assert f"cannot start: state directory {state} is unusable: not a directory" in log
        assert "Traceback" not in log
    finally:
        subprocess.run(["rm", "-rf", workdir], check=False)
