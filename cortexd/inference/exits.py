"""How a runner ended, and a start that failed: what the supervisor keeps and reports.

Apart from the process code (cortexd/inference/process.py), which is
imported only when a runner is first started: a daemon with no model
configured never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

# What sending to a runner that has gone away raises.
RUNNER_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a runner ended."""

    code: int | None
    signal: str | None
    during: str
    stderr: tuple[str, ...]
    at: float
    detail: str | None = None

    @property
    def how(self) -> str:
        """`SIGABRT`, or `exit status 3`."""
        if self.signal is not None:
            return self.signal
        return f"exit status {self.code}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "how": self.how,
            "signal": self.signal,
            "exit_status": self.code,
            "during": self.during,
            "at": self.at,
            "detail": self.detail,
            "stderr": list(self.stderr),
        }


class LoadFailed(Exception):
    """A runner did not become ready: it refused the model or died loading it."""

    def __init__(self, reason: str, *, exit: ExitInfo | None = None, oom: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit = exit
        self.out_of_memory = oom
