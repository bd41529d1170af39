"""Run a command as the first process of new PID and mount namespaces, with its own /proc.

    python nsinit.py [--net] -- COMMAND [ARG...]

The scenarios of tests/explain create their conditions (a full tmpfs, a held
lock, a memory hog, zombies) inside these namespaces, so nothing of the host
is touched and nothing of the host's own processes shows up in the facts.
`--net` adds a network namespace with no interface up (and a sysfs of its
own, so /sys/class/net shows that).

The process started here is PID 1 of the new namespace: it mounts /proc,
starts COMMAND, forwards SIGTERM, SIGINT and SIGHUP to it, reaps every orphan
(zombies whose parent died are re-parented to it) and exits with COMMAND's
status. When it exits the kernel kills whatever else runs in the namespace.
The process in the caller's namespace forwards the same signals to it, so
`running_daemon`'s SIGTERM stops the daemon as it would stop a plain one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    _check(
        libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None
        ),
        f"mount {target}",
    )


def _forward_to(pid: int) -> None:
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)


def _exit_like(status: int) -> NoReturn:
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def _init(argv: list[str], net: bool) -> NoReturn:
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if net:
        _mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    main = os.fork()
    if main == 0:
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    _forward_to(main)
    while True:
        pid, status = os.wait()
        if pid == main:
            _exit_like(status)


def run(args: list[str]) -> NoReturn:
    net = args[:1] == ["--net"]
    if net:
        args = args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: nsinit.py [--net] -- COMMAND [ARG...]")
    flags = CLONE_NEWNS | CLONE_NEWPID | (CLONE_NEWNET if net else 0)
    _check(libc.unshare(flags), "unshare")
    child = os.fork()
    if child == 0:
        _init(args, net)
    _forward_to(child)
    while True:
        pid, status = os.waitpid(child, 0)
        if pid == child:
            _exit_like(status)


if __name__ == "__main__":
    run(sys.argv[1:])
