"""A client that leaves `updates.apply` midway, through the real daemon and a stand-in apt.

A simulated apply is cancelled at once: the next caller is not told BUSY,
even while the package-list read the first one started is still running. A
confirmed apply that has begun goes on to its end: `status` shows it, later
callers are told BUSY naming it, and its outcome is installed and alerted.
"""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cortexd.protocol import CortexError
from tests.daemon import DaemonProcess, running_daemon
from tests.updates.test_updates_daemon import FakeApt

WAIT = 60.0
# How soon after the client left the lock must be free: well under the time a
# real `apt-get -s dist-upgrade` takes, with room for a loaded machine.
PROMPT = 3.0
POLL = 0.05

# Waits while `hold_listing` exists before listing the pending upgrades, the
# way a real apt-get takes seconds over its simulation; the rest is FakeApt's.
SLOW_LISTING = """#!/bin/sh
here=$(dirname "$0")
case " $* " in
  *" dist-upgrade "*)
    touch "$here/listing_started"
    while [ -e "$here/hold_listing" ]; do sleep 0.05; done ;;
esac
exec "$here/apt-get" "$@"
"""


@pytest.fixture
def apt(tmp_path: Path) -> FakeApt:
    return FakeApt(tmp_path)


@pytest.fixture
def daemon(apt: FakeApt) -> Iterator[DaemonProcess]:
    slow = apt.root / "slow-apt-get"
    slow.write_text(SLOW_LISTING)
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    config = apt.config()
    config["updates"]["apt_command"] = [str(slow)]
    with running_daemon(config) as d:
        yield d


def wait_until(predicate: Callable[[], Any], what: str, within: float = WAIT) -> Any:
    deadline = time.monotonic() + within
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL)
    return value


def installing(call: str) -> bool:
    """Whether a recorded apt call is a real (not simulated) install."""
    words = call.split()
    return "--only-upgrade" in words and "-y" in words and "-s" not in words


def start_apply(d: DaemonProcess, params: dict[str, Any]) -> socket.socket:
    """Send `updates.apply` on a raw connection and leave it open, unread."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(d.socket_path)
    request = {"jsonrpc": "2.0", "id": 1, "method": "updates.apply", "params": params}
    sock.sendall(orjson.dumps(request) + b"\n")
    return sock


def updates_state(d: DaemonProcess) -> dict[str, Any]:
    state = d.call("status")["components"]["updates"]
    assert isinstance(state, dict)
    return state


def test_leaving_a_simulated_apply_frees_it_at_once(daemon: DaemonProcess, apt: FakeApt) -> None:
    hold = apt.root / "hold_listing"
    hold.write_text("")
    try:
        client = start_apply(daemon, {"security": True})
        wait_until((apt.root / "listing_started").exists, "the listing")
        state = updates_state(daemon)
        assert state["applying"] is True
        assert state["apply"]["confirmed"] is False
        client.close()
        left = time.monotonic()
        wait_until(lambda: not updates_state(daemon)["applying"], "the apply to stop", PROMPT)
        assert time.monotonic() - left < PROMPT
        # The listing the first apply started is still held: the lock did not wait for it.
        assert hold.exists()
        assert updates_state(daemon)["apply"] is None
    finally:
        hold.unlink(missing_ok=True)
    result = daemon.call("updates.apply", {"security": True}, timeout=WAIT)
    assert result["simulated"] is True
    assert [p["package"] for p in result["packages"]] == ["openssl"]
    assert result["returncode"] == 0


def test_a_confirmed_apply_goes_on_without_its_client(daemon: DaemonProcess, apt: FakeApt) -> None:
    hold = apt.root / "hold"  # FakeApt waits with the real install while it exists
    hold.write_text("")
    try:
        client = start_apply(daemon, {"packages": ["libfoo1"], "confirm": True})
        wait_until(lambda: any(installing(c) for c in apt.calls()), "the install")
        client.close()
        # Where a simulated apply is gone (the test above), this one stays.
        deadline = time.monotonic() + PROMPT
        while time.monotonic() < deadline:
            assert updates_state(daemon)["applying"] is True
            time.sleep(POLL)
        state = updates_state(daemon)
        assert state["applying"] is True and state["state"] == "applying"
        assert state["apply"]["confirmed"] is True
        assert state["apply"]["packages"] == ["libfoo1"]
        with pytest.raises(CortexError) as raised:
            daemon.call("updates.apply", {"security": True})
        assert raised.value.code.name == "BUSY"
        assert "confirmed, 1 package(s)" in raised.value.message
        assert "components.updates.apply" in raised.value.message
    finally:
        hold.unlink(missing_ok=True)
    wait_until(lambda: not updates_state(daemon)["applying"], "the apply to finish")
    state = updates_state(daemon)
    assert (state["applied"], state["failed"]) == (1, 0)
    alerts = [a for a in daemon.call("alerts.list")["alerts"] if a["source"] == "updates"]
    assert [a["title"] for a in alerts] == ["1 package update(s) applied"]
    snapshots = daemon.call("updates.snapshots")["snapshots"]
    assert [s["reason"] for s in snapshots] == ["before update apply"]
