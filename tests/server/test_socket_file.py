"""The socket file: a live daemon is never displaced, a stale file is replaced,
something that is not a socket is left alone, and the file goes on exit."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from tests.daemon import DaemonProcess, base_config, merge, running_daemon, short_tmpdir, spawn

DEADLINE = 60.0


def _start_second(socket_path: str) -> tuple[int, str]:
    """Run a second daemon on `socket_path`; returns its exit code and log."""
    workdir = short_tmpdir()
    try:
        cfg = merge(base_config(workdir), {"server": {"socket_path": socket_path}})
        proc, notify, _, log_path = spawn(workdir, cfg)
        try:
            code = proc.wait(DEADLINE)
        finally:
            notify.close()
        return code, Path(log_path).read_text()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_refuses_to_start_over_a_live_daemon(daemon: DaemonProcess) -> None:
    code, log = _start_second(daemon.socket_path)
    assert code == 1
    assert "already serving" in log
    # The first daemon keeps its socket and answers.
    assert os.path.exists(daemon.socket_path)
    assert daemon.call("ping")["pong"] is True


def test_replaces_a_stale_socket_file() -> None:
    workdir = short_tmpdir()
    try:
        path = os.path.join(workdir, "stale.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()  # the file stays; nobody listens
        with running_daemon({"server": {"socket_path": path}}) as d:
            assert d.call("ping")["pong"] is True
            assert "removing stale socket" in d.log()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_leaves_a_non_socket_file_alone() -> None:
    workdir = short_tmpdir()
    try:
        path = os.path.join(workdir, "precious")
        Path(path).write_text("keep me")
        code, log = _start_second(path)
        assert code == 1
        assert "is not a socket" in log
        assert Path(path).read_text() == "keep me"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_removes_its_socket_on_exit(daemon: DaemonProcess) -> None:
    assert os.path.exists(daemon.socket_path)
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket_path)


def test_does_not_remove_a_socket_file_that_is_no_longer_its_own() -> None:
    with running_daemon() as d:
        # Someone replaced the file (say, a second daemon after ours was
        # thought dead): ours must not delete theirs on the way out.
        os.unlink(d.socket_path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(d.socket_path)
        try:
            assert d.stop() == 0
            assert os.path.exists(d.socket_path)
        finally:
            other.close()
