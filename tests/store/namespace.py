"""A private mount namespace for tests that mount filesystems (root only).

A sleeping process holds the namespace; mounts are made in it with
`nsenter`, daemons run in it the same way, and the test reaches the files
inside through `/proc/<pid>/root`. When the holder is killed the namespace
goes, and every mount in it with it (a loop device set up by `mount -o loop`
detaches itself), so nothing stays mounted on the host even if a test fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SETUP_TIMEOUT = 10.0


class Namespace:
    """The mount namespace of a holder process (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def enter(self) -> list[str]:
        """The prefix that runs a command inside the namespace."""
        return ["nsenter", "-t", str(self.pid), "-m", "--"]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside; raises CalledProcessError with its output on failure."""
        done = subprocess.run(
            [*self.enter(), *argv], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
        return done

    def daemon_command(self) -> list[str]:
        """`python -m cortexd` inside the namespace, for `running_daemon(command=...)`."""
        return [*self.enter(), sys.executable, "-m", "cortexd"]

    def path(self, path: str | Path) -> Path:
        """Where `path` as seen inside the namespace is, for this process."""
        return Path(f"/proc/{self.pid}/root") / str(path).lstrip("/")


@contextlib.contextmanager
def private_mounts() -> Iterator[Namespace]:
    """A fresh mount namespace, gone (with its mounts) when the block ends."""
    ours = os.readlink("/proc/self/ns/mnt")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SETUP_TIMEOUT
        while os.readlink(f"/proc/{proc.pid}/ns/mnt") == ours:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("unshare did not create a mount namespace")
            time.sleep(0.01)
        yield Namespace(proc)
    finally:
        proc.kill()
        proc.wait(SETUP_TIMEOUT)
