"""A state directory on a filesystem that fills up, or turns read-only, while the daemon runs.

Real filesystems in a private mount namespace (root only): a 2 MiB tmpfs and
a loop-mounted 64 MiB ext4 image, filled to zero free space. The daemon must
stay up, answer every write with `ok` or a clear UNAVAILABLE naming the
filesystem, keep reads and monitoring going, fire (and notify) the disk
alert it cannot store, resume writes by itself when space returns, and keep
everything it answered `ok` across a restart.
"""

from __future__ import annotations

import dataclasses
import errno
import os
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
from tests.daemon import DaemonProcess, running_daemon, short_tmpdir, spawn
from tests.notify.helpers import Receiver, receiver
from tests.store.namespace import Namespace, private_mounts

pytestmark = [pytest.mark.root, pytest.mark.slow]

RAISES = 500
WAIT = 60.0
NO_SPACE = "no space left on device"
READ_ONLY = "read-only file system"
DATABASES = ("alerts.db", "notify.db", "repair.db")


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount, losetup)")
    with private_mounts() as ns:
        yield ns


def wait_for(predicate: Callable[[], Any], what: str, within: float = WAIT) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def mount_state(ns: Namespace, kind: str, scratch: Path) -> str:
    """A fresh filesystem of `kind` mounted (inside `ns`) on a new directory; its path."""
    state = str(scratch / "state")
    os.mkdir(state)
    if kind == "tmpfs":
        ns.run("mount", "-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs", state)
    else:
        image = scratch / "state.ext4"
        with open(image, "wb") as fh:
            fh.truncate(64 << 20)
        # -m 0: no blocks reserved for root, so "full" is full for the daemon too.
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
        ns.run("mount", "-o", "loop,errors=remount-ro", str(image), state)
    return state


def fill(path: Path) -> None:
    """Write `path` until the filesystem has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def read_only(directory: Path) -> bool:
    """Whether creating a file fails with EROFS (statvfs may still say rw after an error)."""
    try:
        (directory / "probe").touch()
    except OSError as exc:
        return exc.errno == errno.EROFS
    return False


def config(state: str, hook: Receiver, workdir: Path) -> dict[str, Any]:
    rules = workdir / "alerts.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "alerts": [
                    {
                        "name": "disk",
                        "check": "disk_space",
                        "status": "fail",
                        "actions": [{"type": "webhook", "url": hook.url()}],
                    }
                ]
            }
        )
    )
    checks: dict[str, Any] = {f.name: {"enabled": False} for f in dataclasses.fields(ChecksConfig)}
    checks["disk_space"] = {"include": [state], "interval_seconds": 0.5}
    return {
        "state_dir": state,
        "alerts": {"max_active": RAISES * 2},
        "notify": {"rules_path": str(rules)},
        "checks": checks,
    }


def raise_many(d: DaemonProcess, tag: str, count: int) -> tuple[list[str], list[CortexError]]:
    """`count` alerts.raise on one connection: the ids answered ok, the errors answered."""
    ok: list[str] = []
    errors: list[CortexError] = []
    with Client(d.socket_path, timeout=30) as client:
        for n in range(count):
            params = {"title": f"{tag} {n}", "labels": {"run": tag, "n": str(n)}}
            try:
                ok.append(client.call("alerts.raise", params)["alert"]["id"])
            except CortexError as exc:
                errors.append(exc)
    return ok, errors


def disk_alert(d: DaemonProcess, state: str) -> dict[str, Any] | None:
    listed = d.call("alerts.list", {"state": "all", "limit": 1000})["alerts"]
    for alert in listed:
        if alert["source"] == "disk_space" and alert["labels"].get("mountpoint") == state:
            return dict(alert)
    return None


def stored_ids(d: DaemonProcess) -> set[str]:
    listed = d.call("alerts.list", {"state": "all", "limit": 5000})["alerts"]
    return {a["id"] for a in listed}


# Run inside the namespace: SQLite resolves the /proc/<pid>/root link to its
# text ("/") and would open the files under the mountpoint, not the mount.
INTEGRITY = """
import sqlite3, sys
for path in sys.argv[1:]:
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    print(path, conn.execute("PRAGMA integrity_check").fetchone()[0],
          conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
    conn.close()
"""


def assert_sound(ns: Namespace, state: str) -> None:
    """Once the daemon has stopped: every database passes integrity_check, none was moved aside."""
    assert not list(ns.path(state).glob("*.corrupt-*"))
    paths = [os.path.join(state, name) for name in DATABASES]
    done = ns.run(sys.executable, "-c", INTEGRITY, *paths)
    for line, path in zip(done.stdout.splitlines(), paths, strict=True):
        checked, verdict, tables = line.split()
        assert (checked, verdict) == (path, "ok")
        assert int(tables) > 0, f"{path} has no tables: not the daemon's database"


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_a_full_state_filesystem_costs_writes_only_and_loses_nothing_answered_ok(
    namespace: Namespace, kind: str, tmp_path: Path
) -> None:
    state = mount_state(namespace, kind, tmp_path)
    inside = namespace.path(state)
    with receiver() as hook:
        cfg = config(state, hook, tmp_path)
        with running_daemon(cfg, command=namespace.daemon_command()) as d:
            before, failed = raise_many(d, "before", 5)
            assert len(before) == 5 and not failed
            fill(inside / "ballast")
            assert os.statvfs(inside).f_bavail == 0

            ok, errors = raise_many(d, "full", RAISES)
            assert d.proc.poll() is None, d.log()
            assert len(ok) + len(errors) == RAISES
            assert errors, "a full filesystem refused no write"
            for exc in errors:
                assert exc.code == ErrorCode.UNAVAILABLE, exc.message
                assert exc.data["reason"] == NO_SPACE, exc.data
                assert exc.data["filesystem"] == state
                assert exc.data["database"] == "alerts.db"
            # Reads, the socket and monitoring go on.
            assert d.call("ping")["pong"] is True
            assert before[0] in stored_ids(d)
            status = d.call("status")["components"]["alerts"]
            assert status["state"] == "running"
            assert status["storage"]["state"] == "degraded"
            assert status["storage"]["reason"] == NO_SPACE
            # The disk alert fires and is notified although it cannot be stored.
            fired = wait_for(lambda: disk_alert(d, state), "the disk alert")
            assert fired["severity"] == "CRITICAL"
            (post,) = hook.wait_for(1)
            assert post.json()["alerts"][0]["labels"]["mountpoint"] == state

            (inside / "ballast").unlink()
            # Writes resume without a restart.
            again = wait_for(lambda: raise_many(d, "after", 1)[0], "writes to resume")
            stored = stored_ids(d)
            assert set(before + ok + again) <= stored
            assert d.call("status")["components"]["alerts"]["storage"]["state"] == "ok"
            wait_for(
                lambda: d.call("status")["components"]["alerts"]["held_in_memory"] == 0,
                "the held disk alert to be written",
            )
            disk_id = fired["id"]
        assert d.proc.returncode == 0, d.log()

        with running_daemon(cfg, command=namespace.daemon_command()) as d:
            stored = stored_ids(d)
            assert set(before + ok + again) <= stored
            assert disk_id in stored
        assert_sound(namespace, state)


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_a_daemon_started_on_a_full_filesystem_serves_and_resumes_writes(
    namespace: Namespace, kind: str, tmp_path: Path
) -> None:
    state = mount_state(namespace, kind, tmp_path)
    inside = namespace.path(state)
    with receiver() as hook:
        cfg = config(state, hook, tmp_path)
        with running_daemon(cfg, command=namespace.daemon_command()) as d:
            before, _ = raise_many(d, "before", 5)
        assert len(before) == 5
        fill(inside / "ballast")
        with running_daemon(cfg, command=namespace.daemon_command()) as d:
            assert set(before) <= stored_ids(d)
            ok, errors = raise_many(d, "full", 3)
            assert errors and {e.data["reason"] for e in errors} == {NO_SPACE}
            wait_for(lambda: disk_alert(d, state), "the disk alert")
            (inside / "ballast").unlink()
            again = wait_for(lambda: raise_many(d, "after", 1)[0], "writes to resume")
        assert d.proc.returncode == 0, d.log()
        with running_daemon(cfg, command=namespace.daemon_command()) as d:
            assert set(before + ok + again) <= stored_ids(d)
        assert_sound(namespace, state)


def test_a_state_filesystem_that_turns_read_only_costs_writes_only(
    namespace: Namespace, tmp_path: Path
) -> None:
    state = mount_state(namespace, "ext4", tmp_path)
    inside = namespace.path(state)
    device = os.path.basename(namespace.run("findmnt", "-no", "SOURCE", state).stdout.strip())
    with receiver() as hook:
        cfg = config(state, hook, tmp_path)
        with running_daemon(cfg, command=namespace.daemon_command()) as d:
            before, failed = raise_many(d, "before", 5)
            assert len(before) == 5 and not failed
            # Written back, as anything older than the kernel's writeback delay
            # is: commits still in the page cache when a filesystem fails are
            # lost as in an OS crash (synchronous=NORMAL, see docs/performance.md).
            os.sync()
            # An ext4 error with errors=remount-ro: what a failing disk does to it.
            Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("cortex test")
            wait_for(lambda: read_only(inside), "the filesystem to turn read-only")
            ok, errors = raise_many(d, "ro", 50)
            assert d.proc.poll() is None, d.log()
            assert not ok
            for exc in errors:
                assert exc.code == ErrorCode.UNAVAILABLE, exc.message
                assert exc.data["reason"] == READ_ONLY, exc.data
                assert exc.data["filesystem"] == state
            assert d.call("ping")["pong"] is True
            assert set(before) <= stored_ids(d)
            status = d.call("status")["components"]["alerts"]
            assert status["storage"] == {
                "file": "alerts.db",
                "state": "degraded",
                "reason": READ_ONLY,
                "since": status["storage"]["since"],
            }
        assert d.proc.returncode == 0, d.log()
        # An aborted ext4 comes back only through fsck and a new mount.
        namespace.run("umount", state)
        subprocess.run(["e2fsck", "-fy", str(tmp_path / "state.ext4")], capture_output=True)
        namespace.run("mount", "-o", "loop", str(tmp_path / "state.ext4"), state)
        with running_daemon(cfg, command=namespace.daemon_command()) as d:
            assert set(before) <= stored_ids(d)
        assert_sound(namespace, state)


def test_a_state_directory_on_a_read_only_filesystem_stops_the_daemon(
    namespace: Namespace, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    os.mkdir(state)
    namespace.run("mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", state)
    workdir = short_tmpdir()
    try:
        cfg = {
            "state_dir": state,
            "server": {"socket_path": os.path.join(workdir, "c.sock")},
            "logging": {"level": "INFO", "target": "stderr"},
            "notify": {"rules_path": os.path.join(workdir, "alerts.yaml")},
            "plugins": {"directory": os.path.join(workdir, "plugins")},
        }
        proc, notify, _config_path, log_path = spawn(
            workdir, cfg, command=namespace.daemon_command()
        )
        try:
            assert proc.wait(WAIT) == 1
        finally:
            notify.close()
        log = Path(log_path).read_text()
        assert f"cannot start: state directory {state} is unusable: read-only file system" in log
        assert "Traceback" not in log
    finally:
        subprocess.run(["rm", "-rf", workdir], check=False)
