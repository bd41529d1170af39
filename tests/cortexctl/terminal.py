"""Run cortexctl on a real pseudo-terminal, as an operator would, and answer its questions."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Sequence

CORTEXCTL = (sys.executable, "-m", "cortexctl")
PROMPT = b"[y/N] "
COLUMNS = 160
ROWS = 40
READ_TIMEOUT = 120.0


def cli_env() -> dict[str, str]:
    """The test's environment without a socket override, NO_COLOR or a forced width."""
    drop = ("CORTEX_SOCKET", "NO_COLOR", "COLUMNS", "LINES")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["TERM"] = "xterm"
    return env


def on_terminal(
    argv: Sequence[str],
    *,
    answers: Sequence[str] = (),
    while_running: Callable[[bytes], None] | None = None,
    timeout: float = READ_TIMEOUT,
) -> tuple[int, str]:
    """Run `argv` with stdin, stdout and stderr on a new pty of COLUMNS x ROWS.

    Each time the output ends with a `[y/N] ` prompt the next of `answers` is
    typed. `while_running(shown so far)` is called after each read (to act
    while the command waits). Returns the exit status and everything the
    terminal received, escape sequences included.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen(
        list(argv), stdin=slave, stdout=slave, stderr=slave, env=cli_env(), close_fds=True
    )
    os.close(slave)
    shown = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every holder of the slave side is gone
                break
            if not chunk:
                break
            shown += chunk
            if pending and shown.endswith(PROMPT):
                os.write(master, pending.pop(0).encode() + b"\n")
            if while_running is not None:
                while_running(shown)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, shown.decode(errors="replace")
