"""Running host commands: injectable, bounded, niced, killable.

Checks, fixes, healing and updates run commands on worker threads, and a
thread cannot be cancelled; so every child process is tracked here and
`kill_all()` (called when its owner stops) ends any still running, rather
than leaving apt or dpkg orphaned behind a stopped daemon.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cortexd.protocol import CortexError, ErrorCode

DEFAULT_COMMAND_TIMEOUT = 60.0
# Checks are background work: they yield the CPU to whatever the host is for.
NICENESS = 10


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], float], CommandResult]
STDERR_EXCERPT = 300


class CommandFailed(CortexError):
    """A host command could not do its work: it exited with an error, or its runner stopped.

    Answered as UNAVAILABLE: the host, not the request, is what went wrong.
    """

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message, **data)

    @classmethod
    def of(cls, program: str, done: CommandResult) -> CommandFailed:
        """`program failed: <first part of stderr>` for a finished command."""
        return cls(
            f"{program} failed: {done.stderr.strip()[:STDERR_EXCERPT]}",
            program=program,
            returncode=done.returncode,
        )


class CommandRunner:
    """Runs commands with the C locale (parsable output), low priority and a deadline."""

    def __init__(self, niceness: int = NICENESS) -> None:
        self.niceness = niceness
        self._children: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def __call__(
        self, argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT
    ) -> CommandResult:
        """Run `argv` to completion.

        Raises:
            FileNotFoundError: the program is not installed.
            subprocess.TimeoutExpired: it ran past `timeout` (its process group is killed).
            CommandFailed: the runner was stopped.
        """
        env = {**os.environ, "LC_ALL": "C", "LANG": "C", "DEBIAN_FRONTEND": "noninteractive"}
        command = list(argv)
        if self.niceness and have("nice"):
            command = ["nice", "-n", str(self.niceness), *command]
        with self._lock:
            if self._stopped:
                raise CommandFailed("the command runner is stopping")
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=env,
                start_new_session=True,
            )
            self._children.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.communicate()
            raise
        finally:
            with self._lock:
                self._children.discard(proc)
        return CommandResult(proc.returncode, stdout, stderr)

    def kill_all(self) -> None:
        """Kill every running child (and its process group); later calls fail fast."""
        with self._lock:
            self._stopped = True
            children = list(self._children)
        for proc in children:
            _kill(proc)


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_command(argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
    """Run one command outside any long-lived runner (tools and tests)."""
    return CommandRunner(niceness=0)(argv, timeout)


def is_real(runner: Runner) -> bool:
    """Whether `runner` runs real commands (an injected one skips host probes)."""
    return isinstance(runner, CommandRunner) or runner is run_command


def have(program: str) -> bool:
    return shutil.which(program) is not None


def first_line(text: str) -> str:
    """The first non-blank line of a command's output, cut to a readable length."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:STDERR_EXCERPT]
    return "(no output)"
