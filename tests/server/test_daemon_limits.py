"""Limits on the real daemon process: stalled clients, idle connections, the
connection cap and the descriptor limit it raises to fit."""

from __future__ import annotations

import contextlib
import resource
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from cortexctl import Client
from tests.daemon import DaemonProcess, base_config, merge, running_daemon, short_tmpdir, spawn

DEADLINE = 60.0
FD_CAP = 48
POLL = 0.05


def wait_for(predicate: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL)


def open_count(client: Client) -> int:
    return int(client.call("status")["server"]["connections_open"])


def test_client_that_never_reads_is_cut_off() -> None:
    config = {"server": {"write_timeout": 0.5}}
    with running_daemon(config) as d, Client(d.socket_path) as watcher:
        hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hog.connect(d.socket_path)
        hog.settimeout(DEADLINE)
        request = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "config.get"}) + b"\n"

        def flood() -> None:
            # Far more answers than the socket buffers hold; never read them.
            with contextlib.suppress(OSError):
                hog.sendall(request * 20000)

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        try:
            wait_for(lambda: d.call("status")["server"]["requests_total"] > 100, "the flood")
            # Another client is served at once while the hog is stuck.
            for _ in range(20):
                assert watcher.call("ping")["pong"] is True
            wait_for(lambda: open_count(watcher) == 1, "the hog to be disconnected")
            assert "stopped reading" in d.log()
            assert watcher.call("ping")["pong"] is True
        finally:
            hog.close()
            sender.join(DEADLINE)


def test_slow_loris_does_not_delay_a_second_client(daemon: DaemonProcess) -> None:
    line = orjson.dumps({"jsonrpc": "2.0", "id": "loris", "method": "ping"}) + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as loris:
        loris.connect(daemon.socket_path)
        loris.settimeout(DEADLINE)
        loris.sendall(line[:10])  # a partial line, then silence
        with Client(daemon.socket_path) as other:
            for _ in range(50):
                assert other.call("ping", timeout=10)["pong"] is True
        loris.sendall(line[10:])
        answer = orjson.loads(loris.recv(65536))
        assert answer["id"] == "loris"
        assert answer["result"]["pong"] is True


def test_idle_connection_closed_by_the_daemon() -> None:
    with running_daemon({"server": {"idle_timeout": 0.5}}) as d:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.connect(d.socket_path)
            idle.settimeout(DEADLINE)
            assert idle.recv(1) == b""  # EOF: the daemon closed it
        assert d.call("ping")["pong"] is True


def test_daemon_raises_its_descriptor_limit_to_fit_max_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        with running_daemon({"server": {"max_connections": 1024}}) as d:
            limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    daemon_soft = int(line.split()[3])
    wanted = 1024 + 256 if hard == resource.RLIM_INFINITY else min(1024 + 256, hard)
    assert daemon_soft >= wanted


def test_running_out_of_descriptors_does_not_stop_the_daemon() -> None:
    workdir = short_tmpdir()
    cfg = merge(base_config(workdir), {"server": {"max_connections": 1024}})
    # A hard limit the daemon cannot raise: accept() will hit EMFILE.
    command = ["prlimit", f"--nofile={FD_CAP}:{FD_CAP}", sys.executable, "-m", "cortexd"]
    proc, notify, _, log_path = spawn(workdir, cfg, command=command)
    clients: list[socket.socket] = []
    try:
        notify.wait_for(lambda m: m.get("READY") == "1", DEADLINE)
        path = cfg["server"]["socket_path"]
        for _ in range(FD_CAP * 2):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(DEADLINE)
            sock.connect(path)  # lands in the backlog even when accept() fails
            clients.append(sock)
        wait_for(lambda: "accept failed" in Path(log_path).read_text(), "accept to fail")
        for sock in clients:
            sock.close()
        clients.clear()
        assert proc.poll() is None, Path(log_path).read_text()[-3000:]
        with Client(path, timeout=DEADLINE) as client:
            assert client.call("ping")["pong"] is True
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        proc.wait(DEADLINE)
        notify.close()
        shutil.rmtree(workdir, ignore_errors=True)
