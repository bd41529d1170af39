"""Grading a measured value: warning and critical levels with hysteresis.

Netdata's idea: a level is raised at one value and cleared at a lower one, so
a value hovering at the line does not flap. monit's: a raise needs N samples
in a row. Dropping to a lower level needs only one sample below its clear
level, so a recovery is reported promptly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

Level = Literal["PASS", "WARN", "FAIL"]
_ORDER: dict[Level, int] = {"PASS": 0, "WARN": 1, "FAIL": 2}


@dataclass(frozen=True, slots=True)
class Thresholds:
    warning: float
    warning_clear: float
    critical: float
    critical_clear: float
    samples: int = 1

    def problems(self) -> list[str]:
        out = []
        if not self.warning_clear <= self.warning <= self.critical:
            out.append("needs warning_clear <= warning <= critical")
        if not self.critical_clear <= self.critical:
            out.append("needs critical_clear <= critical")
        return out

    def override(self, **given: Any) -> Thresholds:
        """These thresholds with the non-None values of `given` replacing ours."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {
            "warning": self.warning,
            "warning_clear": self.warning_clear,
            "critical": self.critical,
            "critical_clear": self.critical_clear,
            "samples": self.samples,
        }


class LevelTracker:
    """The graded level of one subject over successive samples."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.level: Level = "PASS"
        self._streak = 0

    def update(self, value: float) -> Level:
        """Take one sample; return the level now in force."""
        t = self.thresholds
        if self.level == "FAIL":
            held: Level = "FAIL" if value > t.critical_clear else self._below_critical(value)
        elif self.level == "WARN":
            if value >= t.critical:
                held = "FAIL"
            elif value > t.warning_clear:
                held = "WARN"
            else:
                held = "PASS"
        else:
            held = self._raw(value)
        if _ORDER[held] <= _ORDER[self.level]:
            self.level = held
            self._streak = 0
            return self.level
        self._streak += 1
        if self._streak >= t.samples:
            self.level = held
            self._streak = 0
        return self.level

    def _raw(self, value: float) -> Level:
        t = self.thresholds
        if value >= t.critical:
            return "FAIL"
        if value >= t.warning:
            return "WARN"
        return "PASS"

    def _below_critical(self, value: float) -> Level:
        return "WARN" if value > self.thresholds.warning_clear else "PASS"
