"""Start the servers under test: the real daemon and the echo server.

The daemon runs as `python -m cortexd --config FILE` with no model, logging
at WARN, and a datagram socket standing in for systemd's NOTIFY_SOCKET, so
"ready" means what systemd would see: the `READY=1` datagram.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

from tests.daemon import merge, stop_process

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
IDLE_CPU = 0.02  # share of one core under which a process counts as idle
SETTLE_WINDOW = 0.5
SETTLE_TIMEOUT = 120.0
ECHO_SCRIPT = Path(__file__).with_name("echo_server.py")
# Variables that would point the daemon at a real systemd, a real config or a model.
_SCRUBBED_PREFIXES = ("CORTEXD_", "LISTEN_", "NOTIFY_", "WATCHDOG_", "JOURNAL_STREAM")


def short_tmpdir(prefix: str = "cxb") -> str:
    """A directory under /tmp short enough for a Unix socket path (108 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


@dataclass
class Running:
    """A server process under test and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    socket_path: str
    ready_seconds: float
    log_path: str

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` of the server's log, for error messages."""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM, then SIGKILL past the deadline; returns the exit status."""
        return stop_process(self.proc, STOP_TIMEOUT)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_ready(notify: socket.socket, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no READY=1 from the daemon")
        # Short slices so a daemon that died is noticed without waiting it all out.
        notify.settimeout(min(remaining, 0.5))
        try:
            data = notify.recv(65536)
        except TimeoutError:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with status {proc.returncode}") from None
            continue
        if "READY=1" in data.decode(errors="replace").splitlines():
            return


def start_daemon(
    workdir: str,
    *,
    prefix: Sequence[str] = (),
    settings: dict[str, Any] | None = None,
) -> Running:
    """Start cortexd in `workdir` and return once it sent READY=1.

    `prefix` goes before `-m cortexd` (e.g. `-m cProfile -o FILE`); `settings`
    are merged over the bench's own config (nested keys one by one).

    Raises:
        TimeoutError: no READY=1 within READY_TIMEOUT.
        RuntimeError: the daemon exited before it was ready.
    """
    socket_path = os.path.join(workdir, "d.sock")
    config: dict[str, Any] = {
        "state_dir": os.path.join(workdir, "state"),
        "server": {"socket_path": socket_path},
        "logging": {"level": "WARN", "target": "stderr"},
    }
    config = merge(config, settings or {})
    config_path = os.path.join(workdir, "daemon.conf")
    Path(config_path).write_text(yaml.safe_dump(config))
    notify_path = os.path.join(workdir, "notify")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(notify_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    env = _clean_env()
    env["NOTIFY_SOCKET"] = notify_path
    log_path = os.path.join(workdir, "daemon.log")
    cmd = [sys.executable, *prefix, "-m", "cortexd", "--config", config_path]
    try:
        with open(log_path, "ab") as log_file:
            started = time.perf_counter()
            # cwd is the workdir: `-m` puts the cwd first on sys.path, and the
            # daemon should import the installed package (or PYTHONPATH), not
            # whatever tree the bench was started from.
            proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        running = Running("cortexd", proc, socket_path, 0.0, log_path)
        try:
            _wait_ready(notify, proc, time.monotonic() + READY_TIMEOUT)
        except (TimeoutError, RuntimeError) as exc:
            running.stop()
            raise RuntimeError(f"cortexd did not start: {exc}\n{running.log_tail()}") from None
        running.ready_seconds = time.perf_counter() - started
        return running
    finally:
        notify.close()


def start_echo(workdir: str) -> Running:
    """Start the echo server in `workdir`; return once it listens."""
    socket_path = os.path.join(workdir, "e.sock")
    log_path = os.path.join(workdir, "echo.log")
    started = time.perf_counter()
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(ECHO_SCRIPT), socket_path],
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=_clean_env(),
            cwd=workdir,
            start_new_session=True,
        )
    running = Running("echo", proc, socket_path, 0.0, log_path)
    assert proc.stdout is not None
    # The echo server prints one line when it listens; a dead one gives EOF.
    line = proc.stdout.readline()
    if line.strip() != b"READY":
        running.stop()
        raise RuntimeError(f"echo server did not start\n{running.log_tail()}")
    running.ready_seconds = time.perf_counter() - started
    return running


@contextlib.contextmanager
def workspace() -> Iterator[str]:
    """A short private directory, removed afterwards."""
    workdir = short_tmpdir()
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _busy_seconds(proc: psutil.Process) -> float:
    """CPU seconds of `proc`, its reaped children and its live children."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        times = proc.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    with contextlib.suppress(psutil.Error):
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    return total


def wait_idle(
    pid: int,
    *,
    min_uptime: float = 0.0,
    threshold: float = IDLE_CPU,
    timeout: float = SETTLE_TIMEOUT,
) -> tuple[float, bool]:
    """Wait until `pid` has run `min_uptime` seconds and it and its children are idle.

    The daemon's components do their first round of work after READY (the
    monitor runs every check once, the package checks a little later);
    measuring IPC or idle memory in the middle of that would measure the
    checks instead. Idle means under `threshold` of a core over
    SETTLE_WINDOW. Returns the seconds waited and whether it went idle
    within `timeout`.
    """
    proc = psutil.Process(pid)
    started = time.monotonic()
    # create_time is wall-clock; only the difference to now matters here.
    time.sleep(max(0.0, proc.create_time() + min_uptime - time.time()))
    while True:
        before = _busy_seconds(proc)
        time.sleep(SETTLE_WINDOW)
        waited = time.monotonic() - started
        if (_busy_seconds(proc) - before) / SETTLE_WINDOW < threshold:
            return waited, True
        if waited > timeout:
            return waited, False


def line_call(sock: socket.socket, method: str) -> dict[str, Any]:
    """Send one request on a connected socket and return its answer.

    Raises:
        ConnectionError: the server closed the connection.
        RuntimeError: the answer is a JSON-RPC error.
    """
    sock.sendall(orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method}) + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    answer: dict[str, Any] = orjson.loads(buf)
    if "result" not in answer:
        raise RuntimeError(f"{method} failed: {answer.get('error')}")
    return answer


def call(socket_path: str, method: str, timeout: float = 10.0) -> dict[str, Any]:
    """One request on a new connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        return line_call(sock, method)


def python_pass_seconds() -> float:
    """Wall time of `python -c pass` with the interpreter that runs the daemon."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=_clean_env())
    return time.perf_counter() - started
