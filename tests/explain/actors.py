"""The processes that make the scenarios' conditions real, each named for its role.

    python actors.py ROLE [ARG...]

Each sets its process name (what /proc/PID/comm and `ps` show) to ROLE,
creates its condition, prints `ready` and then waits to be killed; the
scenario's namespace ends with the daemon, and with it every actor.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import sys
import time

PR_SET_NAME = 15
MIB = 1024 * 1024


def _name(role: str) -> None:
    ctypes.CDLL(None).prctl(PR_SET_NAME, role.encode()[:15], 0, 0, 0)


def _ready() -> None:
    sys.stdout.write(f"ready {os.getpid()}\n")
    sys.stdout.flush()


def _wait() -> None:
    while True:
        time.sleep(3600)


def mem_hog(mib: str) -> None:
    """Hold `mib` MiB of touched (resident) memory."""
    held = bytearray(int(mib) * MIB)
    for i in range(0, len(held), 4096):
        held[i] = 1
    _ready()
    _wait()


def cpu_burner() -> None:
    """Spin on one CPU for at most two minutes."""
    _ready()
    end = time.monotonic() + 120
    while time.monotonic() < end:
        pass


def zombie_maker(count: str) -> None:
    """Start `count` children that exit at once, and never reap them."""
    for _ in range(int(count)):
        if os.fork() == 0:
            os._exit(0)
    _ready()
    _wait()


def log_writer(path: str, mib: str) -> None:
    """Write `mib` MiB to `path`, delete it, and keep it open."""
    with open(path, "wb") as fh:
        fh.write(b"x" * (int(mib) * MIB))
        fh.flush()
        os.unlink(path)
        _ready()
        _wait()


def fd_leaker(count: str) -> None:
    """Open /dev/null `count` times, with a soft limit a little above that."""
    n = int(count)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = n + n // 6
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(hard, limit)))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]
    _ready()
    _wait()
    del held


def lock_holder(path: str) -> None:
    """Hold an fcntl write lock on `path`, as apt and dpkg do on their lock files."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _ready()
    _wait()


ROLES = {
    "mem-hog": mem_hog,
    "cpu-burner": cpu_burner,
    "zombie-maker": zombie_maker,
    "log-writer": log_writer,
    "fd-leaker": fd_leaker,
    "pkg-installer": lock_holder,
}

if __name__ == "__main__":
    role, *args = sys.argv[1:]
    _name(role)
    ROLES[role](*args)
