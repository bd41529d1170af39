"""Start the real daemon as a subprocess, with a real NOTIFY_SOCKET, for tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from cortexctl.client import Client

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def short_tmpdir(prefix: str = "cx") -> str:
    """A directory under /tmp short enough for a Unix socket path (108 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records each message."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[dict[str, str]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self.messages.append(fields)
                self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float
    ) -> dict[str, str]:
        """The first message (seen so far or arriving within `timeout`) matching `predicate`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching notification; got {self.messages}")
                self._cond.wait(remaining)

    def keys(self) -> list[str]:
        """Which state keys arrived, in order (READY, WATCHDOG, RELOADING, STOPPING)."""
        with self._cond:
            out: list[str] = []
            for message in self.messages:
                out.extend(
                    k for k in ("READY", "WATCHDOG", "RELOADING", "STOPPING") if k in message
                )
            return out

    def close(self) -> None:
        self.sock.close()


@dataclass
class DaemonProcess:
    """A running cortexd and the paths around it."""

    proc: subprocess.Popen[bytes]
    socket_path: str
    config_path: str
    state_dir: str
    workdir: str
    notify: NotifyListener
    log_path: str
    extra_env: dict[str, str] = field(default_factory=dict)

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.socket_path, timeout=timeout)

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        with self.client(timeout) as client:
            return client.call(method, params)

    def raw(self, payload: bytes, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Send raw bytes on a new connection; return every frame until the daemon closes
        or nothing arrives for a short while."""
        frames: list[dict[str, Any]] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(self.socket_path)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            buf = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                buf += chunk
            frames.extend(orjson.loads(line) for line in buf.splitlines() if line.strip())
        return frames

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def write_config(self, config: dict[str, Any]) -> None:
        Path(self.config_path).write_text(yaml.safe_dump(config))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        return stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, then SIGKILL if it is still running after `timeout`; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def base_config(workdir: str) -> dict[str, Any]:
    return {
        "state_dir": os.path.join(workdir, "state"),
        "server": {"socket_path": os.path.join(workdir, "c.sock")},
        "logging": {"level": "DEBUG", "target": "stderr"},
        # What an installed cortexd keeps under /etc/cortex never leaks into tests.
        "notify": {"rules_path": os.path.join(workdir, "alerts.yaml")},
        "plugins": {"directory": os.path.join(workdir, "plugins")},
        # Tests send no traffic off this machine: probe only loopback names.
        "checks": {
            "dns_resolution": {"targets": ["localhost"]},
            "network_connectivity": {"targets": []},
        },
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def spawn(
    workdir: str,
    config: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    command: list[str] | None = None,
    pass_fds: tuple[int, ...] = (),
    notify: NotifyListener | None = None,
) -> tuple[subprocess.Popen[bytes], NotifyListener, str, str]:
    config_path = os.path.join(workdir, "daemon.conf")
    Path(config_path).write_text(yaml.safe_dump(config))
    notify = notify or NotifyListener(os.path.join(workdir, "notify"))
    log_path = os.path.join(workdir, "daemon.log")
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CORTEXD_", "LISTEN_", "NOTIFY_", "WATCHDOG_", "JOURNAL_STREAM"))
    }
    full_env["NOTIFY_SOCKET"] = notify.path
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    cmd = command or [sys.executable, "-m", "cortexd"]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [*cmd, "--config", config_path, *(args or [])],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            pass_fds=pass_fds,
            start_new_session=True,
        )
    return proc, notify, config_path, log_path


_WITH_METHODS = """
import sys

from cortexd import app
from cortexd.main import main
from cortexd.server import Method, Param

{source}

_build = app.Daemon.__init__


def _build_with_test_methods(self, *args, **kwargs):
    _build(self, *args, **kwargs)
    self.registry.add(TEST_METHODS)


app.Daemon.__init__ = _build_with_test_methods
sys.exit(main(sys.argv[1:]))
"""


def with_test_methods(source: str) -> list[str]:
    """A `command` for `running_daemon`: the real entry point, with the methods
    in `source` added to the daemon's registry. `source` is Python that defines
    `TEST_METHODS`, a list of `Method`s (`Method` and `Param` are imported)."""
    return [sys.executable, "-c", _WITH_METHODS.format(source=source)]


@contextlib.contextmanager
def running_daemon(
    config: dict[str, Any] | None = None,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    command: list[str] | None = None,
    wait_ready: bool = True,
) -> Iterator[DaemonProcess]:
    """Start cortexd with `config` merged over a private temp layout; stop it after.

    `command` replaces `python -m cortexd` (a launcher, a prlimit or nsenter
    prefix); `--config PATH` and `args` are appended to it.
    """
    workdir = short_tmpdir()
    os.chmod(workdir, 0o755)  # lets an unprivileged peer reach the socket in tests
    cfg = merge(base_config(workdir), config or {})
    proc, notify, config_path, log_path = spawn(workdir, cfg, env=env, args=args, command=command)
    daemon = DaemonProcess(
        proc=proc,
        socket_path=cfg["server"]["socket_path"],
        config_path=config_path,
        state_dir=cfg["state_dir"],
        workdir=workdir,
        notify=notify,
        log_path=log_path,
    )
    try:
        if wait_ready:
            try:
                notify.wait_for(lambda m: m.get("READY") == "1", READY_TIMEOUT)
                # READY=1 comes once the socket listens; `STATUS=serving on …`
                # once every feature has started and the daemon accepts
                # (docs/systemd.md): what a test reads on disk or in the
                # journal is there by then. No connection is spent on it.
                notify.wait_for(
                    lambda m: m.get("STATUS", "").startswith("serving on"), READY_TIMEOUT
                )
            except TimeoutError as exc:
                proc.kill()
                raise AssertionError(
                    f"daemon never became ready ({exc}); log:\n{daemon.log()}"
                ) from None
        yield daemon
    finally:
        daemon.stop()
        notify.close()
        shutil.rmtree(workdir, ignore_errors=True)
