"""Running a host command for a check: injectable, bounded, C locale."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
    """Run `argv` with the C locale (parsable output) and a deadline.

    Raises:
        FileNotFoundError: the program is not installed.
        subprocess.TimeoutExpired: it ran past `timeout` (the process is killed).
    """
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return CommandResult(done.returncode, done.stdout, done.stderr)


def have(program: str) -> bool:
    return shutil.which(program) is not None
