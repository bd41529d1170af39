"""Authorization by peer credentials (SO_PEERCRED), with real unprivileged peers.

Runs `cortexctl` as uid/gid 65534 through `setpriv`, with and without the
socket's group and the admin group, against the real daemon, from a copy of
the client uid 65534 can read (so wherever the checkout lives). Needs root
(to create groups and switch users) and `setpriv`.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.daemon import DaemonProcess, running_daemon
from tests.security.accounts import Account, Runner

pytestmark = pytest.mark.root

NOBODY = 65534
CLI_TIMEOUT = 60


@dataclass(frozen=True)
class Groups:
    socket_name: str
    socket_gid: int
    admin_name: str
    admin_gid: int


def _need_root_and_tools() -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to create groups and switch users")
    for tool in ("setpriv", "groupadd", "groupdel"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def _add_group(name: str) -> int:
    subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=30)
    out = subprocess.run(
        ["getent", "group", name], check=True, capture_output=True, text=True, timeout=30
    )
    return int(out.stdout.split(":")[2])


@pytest.fixture(scope="module")
def groups() -> Iterator[Groups]:
    """Two throw-away groups: the socket's group and the admin group."""
    _need_root_and_tools()
    suffix = secrets.token_hex(3)
    sock_name, admin_name = f"cxsock{suffix}", f"cxadm{suffix}"
    sock_gid = _add_group(sock_name)
    try:
        admin_gid = _add_group(admin_name)
        try:
            yield Groups(sock_name, sock_gid, admin_name, admin_gid)
        finally:
            subprocess.run(["groupdel", admin_name], check=False, timeout=30)
    finally:
        subprocess.run(["groupdel", sock_name], check=False, timeout=30)


def as_nobody(*groups: int) -> list[str]:
    """The setpriv prefix that runs a command as uid/gid 65534 with only `groups`."""
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}"]
    if groups:
        return [*prefix, "--groups=" + ",".join(map(str, groups))]
    return [*prefix, "--clear-groups"]


@pytest.fixture(scope="module")
def python_for_nobody() -> Iterator[str]:
    """A command running Python for uid 65534 with the client importable.

    The client is copied where uid 65534 can read it (the checkout may be
    under a directory it cannot enter, such as /root), and an interpreter it
    can execute is found by trying; the command is a small wrapper script.
    """
    _need_root_and_tools()
    nobody = Account("nobody", pwd.getpwuid(NOBODY).pw_name, NOBODY, NOBODY)
    with Runner.prepared(nobody) as runner:
        wrapper = runner.root / "python"
        wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={runner.root} exec {runner.python} "$@"\n')
        wrapper.chmod(0o755)
        yield str(wrapper)


@pytest.fixture(scope="module")
def auth_daemon(groups: Groups) -> Iterator[DaemonProcess]:
    config = {"server": {"socket_group": groups.socket_name, "admin_group": groups.admin_name}}
    with running_daemon(config) as d:
        # running_daemon's directory is 0755, so others can reach the socket
        # and only the socket's own mode and group decide.
        assert os.stat(os.path.dirname(d.socket_path)).st_mode & 0o005 == 0o005
        yield d


def cortexctl_as(
    python: str, daemon: DaemonProcess, groups: tuple[int, ...], *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CORTEX_SOCKET"}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [*as_nobody(*groups), python, "-m", "cortexctl", "--socket", daemon.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        cwd="/",
    )


def test_socket_file_has_the_configured_group(auth_daemon: DaemonProcess, groups: Groups) -> None:
    st = os.stat(auth_daemon.socket_path)
    assert st.st_mode & 0o777 == 0o660
    assert st.st_gid == groups.socket_gid


def test_group_member_may_read_but_not_shut_down(
    auth_daemon: DaemonProcess, groups: Groups, python_for_nobody: str
) -> None:
    ping = cortexctl_as(python_for_nobody, auth_daemon, (groups.socket_gid,), "ping")
    assert ping.returncode == 0, ping.stderr
    status = cortexctl_as(python_for_nobody, auth_daemon, (groups.socket_gid,), "status")
    assert status.returncode == 0, status.stderr

    env = {k: v for k, v in os.environ.items() if k != "CORTEX_SOCKET"}
    proc = subprocess.Popen(
        [
            *as_nobody(groups.socket_gid),
            python_for_nobody,
            "-m",
            "cortexctl",
            "--socket",
            auth_daemon.socket_path,
            "shutdown",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/",
    )
    _, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    assert proc.returncode == 1
    assert "PERMISSION_DENIED" in stderr
    # setpriv execs the client, so the pid the daemon saw is this process's.
    log = auth_daemon.log()
    assert re.search(rf"denied shutdown to uid {NOBODY} pid {proc.pid}\b", log), log[-2000:]
    assert auth_daemon.proc.poll() is None, "the daemon must still be running"
    assert auth_daemon.call("ping")["pong"] is True

    reload = cortexctl_as(python_for_nobody, auth_daemon, (groups.socket_gid,), "config", "reload")
    assert reload.returncode == 1
    assert "PERMISSION_DENIED" in reload.stderr


def test_peer_outside_the_group_cannot_connect(
    auth_daemon: DaemonProcess, groups: Groups, python_for_nobody: str
) -> None:
    result = cortexctl_as(python_for_nobody, auth_daemon, (), "ping")
    assert result.returncode == 3
    assert "permission denied" in result.stderr
    hint = result.stderr.strip().splitlines()[-1]
    assert hint.startswith("hint:")
    assert f"usermod -aG {groups.socket_name} " in hint


def test_admin_group_member_may_reload(
    auth_daemon: DaemonProcess, groups: Groups, python_for_nobody: str
) -> None:
    result = cortexctl_as(
        python_for_nobody, auth_daemon, (groups.socket_gid, groups.admin_gid), "config", "reload"
    )
    assert result.returncode == 0, result.stderr
    assert "configuration reloaded" in result.stdout
