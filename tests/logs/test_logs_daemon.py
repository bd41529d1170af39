"""The log analyzer end to end: a real journald, lines written with systemd-cat,
read back by tail/search/errors/export through the real daemon, and the watcher
raising one alert per unit and pattern with its cursor surviving a restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from cortexd.protocol import CortexError
from tests.daemon import DaemonProcess, running_daemon, short_tmpdir
from tests.test_logging import Journal, daemon_beside

WAIT = 30.0


def cat(journal: Journal, ident: str, text: str, priority: str = "info") -> None:
    """Write one journal line through systemd-cat, beside the journald under test."""
    subprocess.run(
        [*journal.enter, "systemd-cat", "-t", ident, "-p", priority],
        input=text.encode() + b"\n",
        check=True,
        timeout=WAIT,
    )


def poll(fn: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def journal_alerts(daemon: DaemonProcess, unit: str) -> list[dict[str, Any]]:
    found = daemon.call("alerts.list", {"state": "all", "limit": 1000})["alerts"]
    return [a for a in found if a["source"] == "journal" and a["labels"].get("unit") == unit]


def cortexctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", daemon.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


WATCH = {"logs": {"poll_seconds": 0.2}}


@pytest.mark.root
def test_lines_written_with_systemd_cat_are_read_back(journal: Journal) -> None:
    ident = f"cxlog-{uuid.uuid4().hex[:8]}"
    with daemon_beside(journal, WATCH) as daemon:
        cat(journal, ident, f"{ident} all is well")
        cat(journal, ident, f"{ident} worker[42]: segfault at 0 ip 00007f error 4", "err")

        found = poll(
            lambda: (
                len(r := daemon.call("logs.search", {"pattern": ident, "since": "1h"})["entries"])
                == 2
                and r
            ),
            "both lines",
        )
        assert [e["level"] for e in found] == ["info", "err"]
        assert all(e["identifier"] == ident for e in found)

        errors = daemon.call("logs.errors", {"since": "1h", "units": [ident]})
        assert [e["message"] for e in errors["entries"]] == [
            f"{ident} worker[42]: segfault at 0 ip 00007f error 4"
        ]
        assert errors["by_unit"] == {ident: 1}

        tail = daemon.call("logs.tail", {"units": [ident], "lines": 1})
        assert [e["priority"] for e in tail["entries"]] == [3]
        only_errors = daemon.call("logs.tail", {"units": [ident], "level": "warning"})
        assert len(only_errors["entries"]) == 1

        human = cortexctl(daemon, "logs", "errors", "--since", "1h", "--unit", ident)
        assert human.returncode == 0, human.stderr
        assert "segfault at 0" in human.stdout
        assert "all is well" not in human.stdout

        exported = cortexctl(daemon, "logs", "export", "--since", "1h", "--unit", ident)
        assert exported.returncode == 0, exported.stderr
        lines = [orjson.loads(line) for line in exported.stdout.splitlines()]
        assert [line["message"].split(" ", 1)[1] for line in lines] == [
            "all is well",
            "worker[42]: segfault at 0 ip 00007f error 4",
        ]

        # The watcher classified the segfault: one alert for this unit.
        alerts = poll(lambda: journal_alerts(daemon, ident), "the watcher's alert")
        assert len(alerts) == 1
        assert alerts[0]["labels"]["pattern"] == "segfault"
        assert alerts[0]["severity"] == "ERROR"
        assert "segfault at 0" in alerts[0]["description"]


@pytest.mark.root
def test_follow_streams_new_lines(journal: Journal) -> None:
    ident = f"cxfollow-{uuid.uuid4().hex[:8]}"
    with daemon_beside(journal, {}) as daemon:
        cat(journal, ident, "before the follow")
        poll(lambda: daemon.call("logs.search", {"pattern": "before the follow"})["entries"], "x")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(daemon.socket_path)
            request = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "logs.tail",
                "params": {"units": [ident], "follow": True, "lines": 5},
            }
            sock.sendall(orjson.dumps(request) + b"\n")
            reader = sock.makefile("rb")
            first = orjson.loads(reader.readline())
            assert first["method"] == "stream"
            assert first["params"]["id"] == 7
            assert first["params"]["data"]["request_id"]
            assert [e["message"] for e in first["params"]["data"]["entries"]] == [
                "before the follow"
            ]
            cat(journal, ident, "after the follow started")
            cat(journal, "someone-else", "not for this follower")
            frame = orjson.loads(reader.readline())
            assert [e["message"] for e in frame["params"]["data"]["entries"]] == [
                "after the follow started"
            ]
            assert frame["params"]["seq"] == 1


@pytest.mark.root
@pytest.mark.root
def test_a_line_logged_the_moment_ready_arrives_is_news_on_a_first_start(
    journal: Journal,
) -> None:
    """READY=1 comes before the features start: a line logged at once, maybe
    before the watcher reads, is still after the daemon's start, so not history."""
    ident = f"cxnew-{uuid.uuid4().hex[:8]}"
    command = [*journal.enter, sys.executable, "-m", "cortexd"]
    with running_daemon(WATCH, command=command, wait_ready=False) as daemon:
        daemon.notify.wait_for(lambda m: m.get("READY") == "1", WAIT)
        cat(journal, ident, "kernel: app[7]: segfault at 10 ip 0 sp 0 error 6", "err")
        alerts = poll(lambda: journal_alerts(daemon, ident), "the segfault alert")
        assert alerts[0]["labels"]["pattern"] == "segfault"


def test_watcher_cursor_survives_a_restart(journal: Journal) -> None:
    ident = f"cxcur-{uuid.uuid4().hex[:8]}"
    state = os.path.join(short_tmpdir(), "state")
    config = {**WATCH, "state_dir": state}
    try:
        with daemon_beside(journal, config) as daemon:
            cat(journal, ident, "kernel: app[7]: segfault at 10 ip 0 sp 0 error 6", "err")
            first = poll(lambda: journal_alerts(daemon, ident), "segfault alert")
            assert first[0]["count"] == 1
            poll(lambda: daemon.call("status")["components"], "status")
        # Logged while the daemon is down: a restart must not skip it.
        cat(journal, ident, "Out of memory: Killed process 99 (app)", "err")
        with daemon_beside(journal, config) as daemon:
            alerts = poll(
                lambda: len(found := journal_alerts(daemon, ident)) == 2 and found,
                "the OOM alert after the restart",
            )
            by_pattern = {a["labels"]["pattern"]: a for a in alerts}
            assert set(by_pattern) == {"segfault", "oom_kill"}
            assert by_pattern["oom_kill"]["severity"] == "CRITICAL"
            # The old segfault line was not noticed again.
            assert by_pattern["segfault"]["count"] == 1
            watcher = daemon.call("status")["components"]["journal_watcher"]
            assert watcher["state"] == "running"
    finally:
        shutil.rmtree(os.path.dirname(state), ignore_errors=True)


def test_no_journal_is_unavailable(daemon: DaemonProcess) -> None:
    if any(os.path.isdir(d) and os.listdir(d) for d in ("/run/log/journal", "/var/log/journal")):
        pytest.skip("this host has journal files")
    with pytest.raises(CortexError) as raised:
        daemon.call("logs.errors", {"since": "1h"})
    assert raised.value.code.name == "UNAVAILABLE"
    assert "journal" in raised.value.message


@pytest.mark.parametrize(
    ("method", "params", "bad"),
    [
        ("logs.tail", {"lines": 0}, "lines"),
        ("logs.tail", {"level": "loud"}, "level"),
        ("logs.tail", {"units": "ssh"}, "units"),
        ("logs.tail", {"follow": "yes"}, "follow"),
        ("logs.tail", {"unit": ["ssh"]}, "unit"),
        ("logs.errors", {"since": "yesterday"}, "since"),
        ("logs.errors", {"limit": 0}, "limit"),
        ("logs.errors", {"units": [1]}, "units"),
        ("logs.search", {}, "pattern"),
        ("logs.search", {"pattern": "("}, "pattern"),
        ("logs.search", {"pattern": "x", "since": "3 parsecs"}, "since"),
        ("logs.search", {"pattern": "x", "level": "chatty"}, "level"),
        ("logs.export", {"format": "csv"}, "format"),
        ("logs.export", {"since": 5}, "since"),
        ("logs.export", {"limit": 10**9}, "limit"),
    ],
)
def test_bad_params_name_the_param(
    daemon: DaemonProcess, method: str, params: dict[str, Any], bad: str
) -> None:
    with pytest.raises(CortexError) as raised:
        daemon.call(method, params)
    assert raised.value.code.name == "INVALID_PARAMS"
    assert bad in raised.value.message
