"""`cortexctl doctor` as a monitoring plugin: UNKNOWN (3) when it cannot judge."""

from __future__ import annotations

import io
from pathlib import Path

from cortexctl.cli import main as cortexctl
from cortexctl.commands.alerts import duration, label


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return cortexctl(list(args), stdout=out), out.getvalue()


def test_doctor_is_unknown_when_the_daemon_cannot_be_reached(tmp_path: Path) -> None:
    code, _ = run("--socket", str(tmp_path / "none.sock"), "doctor")
    assert code == 3


def test_doctor_usage_errors_are_unknown_but_other_commands_keep_2(tmp_path: Path) -> None:
    assert run("--socket", str(tmp_path / "s"), "doctor", "--no-such-flag")[0] == 3
    assert run("--socket", str(tmp_path / "s"), "alerts", "--no-such-flag")[0] == 2


def test_alert_durations_and_labels_parse() -> None:
    assert [duration(t) for t in ("90", "90s", "15m", "2h", "1d")] == [90, 90, 900, 7200, 86400]
    assert label("job=nightly=1") == ("job", "nightly=1")
