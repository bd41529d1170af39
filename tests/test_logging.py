"""Logging: readable stderr lines, and structured journald entries end to end.

The journald test uses a live journald when one answers (JOURNAL_STREAM, or
a datagram connect to its socket — a stale socket file proves nothing).
Otherwise it starts a standalone /lib/systemd/systemd-journald in a private
mount namespace (tmpfs over /run, and over /var/log/journal when present), so
the host's files are untouched, runs the daemon inside that namespace with
nsenter, reads the entries back with `journalctl -o json`, and stops journald.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from cortexd.log import JournalHandler, StderrFormatter, journald_listening, stderr_is_journal
from tests.daemon import (
    DaemonProcess,
    running_daemon,
)

WAIT = 30.0
JOURNALD = "/lib/systemd/systemd-journald"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO |WARN |ERROR) (\w+): ")


# -- stderr ----------------------------------------------------------------


def test_stderr_lines_show_time_level_component_and_text() -> None:
    with running_daemon({"colour": "blue"}) as daemon:
        daemon.call("ping")
        assert daemon.stop() == 0
        log = daemon.log()
    lines = [line for line in log.splitlines() if LINE.match(line)]
    assert lines, log
    assert any(
        re.search(r" INFO  app: cortexd \S+ serving on " + re.escape(daemon.socket_path), line)
        for line in lines
    ), lines
    assert any(" WARN  main: " in line and "colour: unknown key, ignored" in line for line in lines)
    assert any(" INFO  app: stopped" in line for line in lines)


def test_log_level_flag_hides_lower_levels() -> None:
    with running_daemon({"colour": "blue"}, args=["--log-level", "WARN"]) as daemon:
        daemon.call("ping")
        assert daemon.stop() == 0
        log = daemon.log()
    assert "unknown key, ignored" in log
    assert "serving on" not in log


def test_context_fields_follow_the_text() -> None:
    record = logging.LogRecord(
        "cortexd.alerts.manager", logging.WARNING, __file__, 1, "raised %s", ("disk",), None
    )
    record.ALERT_ID = "a1"
    record.REQUEST_ID = "r2"
    line = StderrFormatter().format(record)
    assert LINE.match(line)
    assert line.endswith(" WARN  alerts: raised disk alert_id=a1 request_id=r2")


def test_stderr_is_the_journal_only_when_journal_stream_matches(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not stderr_is_journal(stream, {})


def test_journal_handler_falls_back_to_stderr_when_journald_refuses() -> None:
    def refuse(message: str, **fields: Any) -> None:
        raise ConnectionRefusedError("journald is gone")

    fallback = io.StringIO()
    handler = JournalHandler(refuse, fallback)
    logger = logging.getLogger("cortexd.test_fallback")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("still visible", extra={"REQUEST_ID": "r1"})
    finally:
        logger.removeHandler(handler)
    assert " ERROR test_fallback: still visible request_id=r1" in fallback.getvalue()


def test_journal_target_without_journald_falls_back_to_stderr() -> None:
    if live_journald():
        pytest.skip("a journald answers here; the fallback needs one that does not")
    with running_daemon({"logging": {"target": "journal"}}) as daemon:
        assert daemon.call("ping")["pong"] is True
        log = daemon.log()
    assert "logging to stderr instead of the journal: journald does not answer" in log
    assert "serving on" in log


# -- journald end to end -----------------------------------------------------


def live_journald() -> bool:
    """A journald answers here: our stderr is its stream, or its socket accepts."""
    return bool(os.environ.get("JOURNAL_STREAM")) or journald_listening()


_live_journald = live_journald  # the name tests/logs/conftest.py imports


@dataclass
class Journal:
    """Where journald runs: `enter` prefixes a command to run beside it."""

    enter: list[str] = field(default_factory=list)

    def entries(self, *matches: str) -> list[dict[str, Any]]:
        result = subprocess.run(
            [*self.enter, "journalctl", "-o", "json", "--no-pager", "--all", *matches],
            capture_output=True,
            timeout=WAIT,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"journalctl failed: {result.stderr.decode(errors='replace')}")
        return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _journal_socket_in(pid: int) -> str:
    return f"/proc/{pid}/root/run/systemd/journal/socket"


@contextlib.contextmanager
def standalone_journald() -> Iterator[Journal]:
    """Start journald in its own mount namespace; stop it afterwards."""
    for tool in ("unshare", "nsenter", "journalctl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.access(JOURNALD, os.X_OK):
        pytest.skip(f"{JOURNALD} is not installed")
    script = (
        "mount -t tmpfs tmpfs /run"
        " && { [ ! -d /var/log/journal ] || mount -t tmpfs tmpfs /var/log/journal; }"
        f" && exec {JOURNALD}"
    )
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + WAIT
            while not journald_listening(_journal_socket_in(proc.pid)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    pytest.skip(
                        "cannot start a standalone systemd-journald here: "
                        + output.read().decode(errors="replace").strip()[-500:]
                    )
                time.sleep(0.02)
            yield Journal(enter=["nsenter", f"--target={proc.pid}", "--mount", "--"])
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(WAIT)


@pytest.fixture
def journal() -> Iterator[Journal]:
    if os.getuid() != 0:
        pytest.skip("reading and starting journald needs root")
    if live_journald():
        yield Journal()
        return
    with standalone_journald() as started:
        yield started


@contextlib.contextmanager
def daemon_beside(journal: Journal, config: dict[str, Any]) -> Iterator[DaemonProcess]:
    command = [*journal.enter, sys.executable, "-m", "cortexd"]
    with running_daemon(config, command=command) as daemon:
        yield daemon


def _reload_with_bad_file(daemon: DaemonProcess) -> dict[str, Any]:
    Path(daemon.config_path).write_text("server:\n  request_timeout: soon\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(daemon.socket_path)
        sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"config.reload"}\n')
        buffer = b""
        while b"\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk
            buffer += chunk
    error: dict[str, Any] = orjson.loads(buffer.split(b"\n", 1)[0])["error"]
    return error


@pytest.mark.root
def test_structured_entries_reach_the_journal(journal: Journal) -> None:
    with daemon_beside(journal, {"logging": {"target": "journal", "level": "INFO"}}) as daemon:
        pid = daemon.proc.pid
        error = _reload_with_bad_file(daemon)
        assert error["data"]["name"] == "CONFIG_ERROR"
        request_id = error["data"]["request_id"]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(WAIT) == 0
        stderr_text = daemon.log()

    deadline = time.monotonic() + WAIT
    while True:
        entries = journal.entries(f"_PID={pid}")
        if any(e.get("MESSAGE") == "stopped" for e in entries):
            break
        assert time.monotonic() < deadline, f"entries never arrived: {entries}"
        time.sleep(0.1)

    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"] == "cortexd"
        assert entry["COMPONENT"]
    started = [e for e in entries if "serving on" in e["MESSAGE"]]
    assert len(started) == 1
    assert started[0]["PRIORITY"] == "6"
    assert started[0]["COMPONENT"] == "app"

    failed = [e for e in entries if e.get("REQUEST_ID") == request_id]
    assert len(failed) == 1, entries
    assert failed[0]["PRIORITY"] == "3"
    assert failed[0]["COMPONENT"] == "app"
    assert "configuration reload failed" in failed[0]["MESSAGE"]
    assert "server.request_timeout: expected a number" in failed[0]["MESSAGE"]

    # They went to the journal, not to stderr.
    assert "serving on" not in stderr_text
    assert len(journal.entries("SYSLOG_IDENTIFIER=cortexd", f"REQUEST_ID={request_id}")) == 1
