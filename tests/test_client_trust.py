"""The client checks whom it talks to before it sends anything.

Real sockets and real servers: a listener in a directory another uid owns, in
a directory writable by others, and one served by a process of another uid
(through setpriv, as root). In each case `cortexctl` exits 3 with the reason,
and the server receives not one byte. The end-to-end attack with two real
accounts (a fake server in another user's /tmp/cortex-<uid>) is in
tests/security/test_escalation.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortexctl import AsyncClient, Client, UntrustedSocket
from cortexctl.client import expected_owners
from tests.daemon import DaemonProcess, short_tmpdir

NOBODY = 65534
WAIT = 30.0

root_only = pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root (and setpriv) to give a directory or a server to another uid",
)


class Listener:
    """A Unix socket server that records every byte it receives."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.received = b""
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(1.0)
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.sock.close()


@pytest.fixture
def workdir() -> Iterator[str]:
    path = short_tmpdir("cxt")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cortexctl(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CORTEX_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", path, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env,
        check=False,
    )


def refused_with(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "refused:" in result.stderr and reason in result.stderr, result.stderr
    assert "nothing was sent" in result.stderr


def test_the_owners_expected_for_each_kind_of_path() -> None:
    uid = os.getuid()
    assert expected_owners("/run/cortex.sock")[0] == frozenset({0})
    assert expected_owners("/srv/elsewhere/c.sock")[0] == frozenset({0, uid})


@root_only
def test_a_directory_of_another_user_is_refused_before_connecting(workdir: str) -> None:
    directory = os.path.join(workdir, "d")
    os.mkdir(directory, 0o755)
    server = Listener(os.path.join(directory, "c.sock"))
    os.chown(directory, NOBODY, NOBODY)
    try:
        refused_with(cortexctl(server.path, "ping"), f"belongs to uid {NOBODY}")
        with pytest.raises(UntrustedSocket), Client(server.path) as client:
            client.call("ping")
    finally:
        server.close()
    assert server.accepted == 0
    assert server.received == b""


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_directory_others_may_write_is_refused(workdir: str, mode: int) -> None:
    directory = os.path.join(workdir, "d")
    os.mkdir(directory)
    os.chmod(directory, mode)
    server = Listener(os.path.join(directory, "c.sock"))
    try:
        refused_with(cortexctl(server.path, "status"), "is writable by others")
    finally:
        server.close()
    assert server.received == b""


@root_only
def test_in_a_sticky_shared_directory_the_socket_owner_decides(
    workdir: str, daemon: DaemonProcess
) -> None:
    directory = os.path.join(workdir, "shared")
    os.mkdir(directory)
    os.chmod(directory, 0o1777)
    ours = os.path.join(directory, "ours.sock")
    os.symlink(daemon.socket_path, ours)  # a link we own, to the real daemon
    assert cortexctl(ours, "ping").returncode == 0
    server = Listener(os.path.join(directory, "theirs.sock"))
    os.chown(server.path, NOBODY, NOBODY)
    try:
        refused_with(cortexctl(server.path, "ping"), f"the socket belongs to uid {NOBODY}")
    finally:
        server.close()
    assert server.received == b""


FAKE_SERVER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[1])
sock.listen(8)
print("ready", flush=True)
with open(sys.argv[2], "ab") as log:
    while True:
        conn, _ = sock.accept()
        conn.settimeout(2)
        try:
            while chunk := conn.recv(65536):
                log.write(chunk)
                log.flush()
        except OSError:
            pass
        conn.close()
"""


@root_only
def test_a_server_of_another_uid_is_refused_after_connecting(workdir: str) -> None:
    directory = os.path.join(workdir, "d")
    os.mkdir(directory, 0o755)
    os.chown(directory, NOBODY, NOBODY)  # let nobody bind...
    path = os.path.join(directory, "c.sock")
    received = Path(workdir) / "received"
    received.touch()
    os.chown(received, NOBODY, NOBODY)
    script = Path(workdir) / "fake.py"
    script.write_text(FAKE_SERVER)
    server = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            os.path.realpath(sys.executable),
            "-I",
            str(script),
            path,
            str(received),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        os.chown(directory, 0, 0)  # ...then give the directory back to root
        os.chmod(path, 0o666)
        refused_with(cortexctl(path, "ping"), f"runs as uid {NOBODY}")

        async def try_async() -> None:
            with pytest.raises(UntrustedSocket):
                async with AsyncClient(path) as client:
                    await client.call("ping")

        asyncio.run(try_async())
    finally:
        server.kill()
        server.wait(WAIT)
        if server.stdout is not None:
            server.stdout.close()
    assert received.read_bytes() == b""


def test_the_real_daemon_passes_both_checks(daemon: DaemonProcess) -> None:
    assert cortexctl(daemon.socket_path, "ping").returncode == 0

    async def ping() -> object:
        async with AsyncClient(daemon.socket_path) as client:
            return await client.call("ping")

    assert asyncio.run(ping())["pong"] is True  # type: ignore[index]
