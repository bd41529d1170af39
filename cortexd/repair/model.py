"""What a fix is: a plan that says exactly what it would do, and an apply that does it.

A fix's `plan()` only looks (it reads lock tables, stats files, asks
`systemctl`); its `apply()` carries out the steps of that plan and nothing
else. Both are plain blocking code: the repair manager runs them on a worker
thread with a deadline, never on the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

Safety = Literal["safe", "confirm"]
StepKind = Literal["command", "file", "unit"]
EXCERPT = 2000


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """The end of a command's output, where the errors are."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing a fix does: run a command, change a file, restart a unit.

    `argv` is the command (for `command` and `unit` steps), `path` the file,
    `action` a short human description ("remove", "chmod 0644", "restart").
    """

    kind: StepKind
    action: str
    argv: tuple[str, ...] = ()
    path: str = ""
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "action": self.action}
        if self.argv:
            out["command"] = list(self.argv)
        if self.path:
            out["path"] = self.path
        if self.unit:
            out["unit"] = self.unit
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    """What applying a fix would do now; `steps` empty means nothing to do."""

    fix_id: str
    target: str | None
    summary: str
    steps: tuple[Step, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "fix_id": self.fix_id,
            "target": self.target,
            "summary": self.summary,
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
            "nothing_to_do": not self.steps,
        }


@dataclass(frozen=True, slots=True)
class StepResult:
    """The outcome of one step, with the tail of a command's output."""

    step: Step
    ok: bool
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.step.to_dict(),
            "ok": self.ok,
            "returncode": self.returncode,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
        }


@dataclass(slots=True)
class Outcome:
    """What an apply did; `verified` is the re-run check's verdict (None: no check)."""

    fix_id: str
    target: str | None
    ok: bool
    results: list[StepResult] = field(default_factory=list)
    verified: bool | None = None
    check_status: str | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "fix_id": self.fix_id,
            "target": self.target,
            "ok": self.ok,
            "verified": self.verified,
            "check_status": self.check_status,
            "message": self.message,
            "steps": [r.to_dict() for r in self.results],
        }


class Fix(ABC):
    """A repair: class attributes describe it, `plan`/`apply` do the work.

    `checks` are the check ids whose `fix_id` names this fix; after an apply
    the manager re-runs them to verify. `targeted` fixes take a subject (a
    unit name); others act on everything their plan finds. `target_label`
    names the alert label that holds a targeted fix's subject, so a fix
    offered for an alert can be planned for that alert's subject.
    """

    id: str
    description: str
    safety: Safety = "confirm"
    checks: tuple[str, ...] = ()
    targeted: bool = False
    target_label: str | None = None

    @abstractmethod
    def plan(self, target: str | None) -> Plan:
        """Look, change nothing, and say what `apply` would do. Blocking."""

    @abstractmethod
    def apply(self, plan: Plan) -> list[StepResult]:
        """Carry out `plan`'s steps; one result per step. Blocking."""

    def summary(self) -> dict[str, Any]:
        """What `fixes.list` shows about this fix."""
        return {
            "id": self.id,
            "description": self.description,
            "safety": self.safety,
            "checks": list(self.checks),
            "targeted": self.targeted,
        }
