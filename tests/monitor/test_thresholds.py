"""Grading with hysteresis and raised-after-N, sample by sample."""

from __future__ import annotations

from cortexd.monitor.thresholds import LevelTracker, Thresholds

DISK = Thresholds(80, 75, 90, 85, samples=1)
CPU = Thresholds(90, 80, 97, 90, samples=2)


def levels(tracker: LevelTracker, values: list[float]) -> list[str]:
    return [tracker.update(v) for v in values]


def test_raise_and_clear_levels_differ() -> None:
    got = levels(LevelTracker(DISK), [50, 80, 79, 76, 75, 81, 90, 86, 85, 80, 74])
    assert got == [
        "PASS",
        "WARN",
        "WARN",  # below the raise level but above warning_clear: held
        "WARN",
        "PASS",  # at the clear level
        "WARN",
        "FAIL",
        "FAIL",  # above critical_clear
        "WARN",  # at critical_clear, still above warning_clear
        "WARN",
        "PASS",
    ]


def test_raised_only_after_n_samples_in_a_row() -> None:
    got = levels(LevelTracker(CPU), [95, 50, 95, 95, 99, 99, 50])
    assert got == ["PASS", "PASS", "PASS", "WARN", "WARN", "FAIL", "PASS"]


def test_a_value_oscillating_around_the_line_raises_once() -> None:
    tracker = LevelTracker(DISK)
    got = levels(tracker, [79.5, 80.5] * 50)
    changes = sum(1 for a, b in zip(["PASS", *got], got, strict=False) if a != b)
    assert changes == 1
    assert got[-1] == "WARN"


def test_override_keeps_unset_values() -> None:
    t = DISK.override(warning=60, samples=None)
    assert (t.warning, t.warning_clear, t.samples) == (60, 75, 1)
    assert t.problems()  # a clear level above its raise level is reported
