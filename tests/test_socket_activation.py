"""Socket activation with the real `systemd-socket-activate`.

It binds the socket, waits for the first connection, then execs the daemon
with LISTEN_FDS/LISTEN_PID (the same process, so signals reach the daemon).
It passes on only the variables named with -E, so NOTIFY_SOCKET goes that way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import yaml

from tests.daemon import NotifyListener, base_config, short_tmpdir

ACTIVATE = shutil.which("systemd-socket-activate")
WAIT = 30.0

pytestmark = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")


@dataclass
class Activated:
    proc: subprocess.Popen[bytes]
    socket_path: str
    own_socket_path: str
    notify: NotifyListener
    log_path: str

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


@pytest.fixture
def activated() -> Iterator[Activated]:
    workdir = short_tmpdir()
    socket_path = os.path.join(workdir, "activated.sock")
    config = base_config(workdir)  # its own socket_path must go unused
    config_path = os.path.join(workdir, "daemon.conf")
    Path(config_path).write_text(yaml.safe_dump(config))
    notify = NotifyListener(os.path.join(workdir, "notify"))
    log_path = os.path.join(workdir, "daemon.log")
    assert ACTIVATE is not None
    command = [
        ACTIVATE,
        "--listen",
        socket_path,
        f"--setenv=NOTIFY_SOCKET={notify.path}",
        "--setenv=PYTHONUNBUFFERED=1",
        sys.executable,
        "-m",
        "cortexd",
        "--config",
        config_path,
    ]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    run = Activated(proc, socket_path, config["server"]["socket_path"], notify, log_path)
    try:
        deadline = time.monotonic() + WAIT
        while not os.path.exists(socket_path):
            assert proc.poll() is None, run.log()
            assert time.monotonic() < deadline, "systemd-socket-activate never bound"
            time.sleep(0.02)
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        notify.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _request(sock: socket.socket, req_id: int, method: str) -> dict[str, object]:
    sock.sendall(orjson.dumps({"jsonrpc": "2.0", "id": req_id, "method": method}) + b"\n")
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buffer += chunk
    answer: dict[str, object] = orjson.loads(buffer.split(b"\n", 1)[0])
    return answer


def test_daemon_serves_on_the_socket_systemd_passes_and_leaves_it_on_exit(
    activated: Activated,
) -> None:
    # The first connection is what makes systemd-socket-activate start the
    # daemon; it waits in the backlog and is answered once the daemon runs.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(activated.socket_path)
        assert _request(sock, 1, "ping")["result"]["pong"] is True  # type: ignore[index]
        ready = activated.notify.wait_for(lambda m: m.get("READY") == "1", WAIT)
        assert ready["MAINPID"] == str(activated.proc.pid)
        status = _request(sock, 2, "status")["result"]
    server = status["components"]["server"]  # type: ignore[index]
    assert server["inherited_socket"] is True
    assert server["socket"] == activated.socket_path
    assert "using the socket passed by systemd" in activated.log()
    # The configured path was never bound: the inherited socket replaces it.
    assert not os.path.exists(activated.own_socket_path)

    activated.proc.send_signal(signal.SIGTERM)
    assert activated.proc.wait(WAIT) == 0
    # The socket belongs to systemd (its .socket unit): the daemon must not remove it.
    assert stat.S_ISSOCK(os.lstat(activated.socket_path).st_mode)
    seen = activated.notify.keys()
    assert "STOPPING" in seen
