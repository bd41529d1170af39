"""The host utilities: one atomic write, one failed-units reader, one command error."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from cortexd.host import CommandFailed, CommandResult, atomic_write, failed_units, run_command
from cortexd.protocol import ErrorCode, error_from_wire


def test_atomic_write_replaces_the_file_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        atomic_write(str(target), b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    atomic_write(str(target), b"newer")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_atomic_write_keeps_the_old_content_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    # A directory in the way makes the rename fail after the data was written.
    blocked = tmp_path / "metrics.prom"
    blocked.mkdir()
    (blocked / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        atomic_write(str(blocked), b"lost")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.prom"]
    assert (blocked / "inside").read_bytes() == b"kept"
    with pytest.raises(FileNotFoundError):
        atomic_write(str(tmp_path / "missing" / "file"), b"x")


def test_atomic_write_never_follows_a_link_planted_at_its_temporary_name(tmp_path: Path) -> None:
    # The temporary name is random and created exclusively: a link planted
    # beside the target is neither written through nor replaced.
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    for guess in ("state.tmp", ".state.tmp", "state.new"):
        (tmp_path / guess).symlink_to(victim)
    atomic_write(str(tmp_path / "state"), b"data")
    assert victim.read_bytes() == b"untouched"
    assert (tmp_path / "state").read_bytes() == b"data"


class Systemctl:
    """Stands in for systemctl answering one way (systemd as PID 1 is not always here)."""

    def __init__(self, code: int, stdout: str = "", stderr: str = "") -> None:
        self.answer = CommandResult(code, stdout, stderr)
        self.seen: list[Sequence[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.seen.append(argv)
        return self.answer


def test_failed_units_reads_systemctls_plain_listing() -> None:
    listing = (
        "● cron.service loaded failed failed Regular background program processing daemon\n"
        "ssh.socket     loaded failed failed OpenBSD Secure Shell server socket\n"
    )
    run = Systemctl(0, listing)
    units = failed_units(run)
    assert [u["unit"] for u in units] == ["cron.service", "ssh.socket"]
    assert units[0]["sub"] == "failed"
    assert units[0]["description"].startswith("Regular background")
    assert run.seen[0][:3] == ("systemctl", "list-units", "--state=failed")


def test_a_failing_systemctl_is_a_command_failed_answered_as_unavailable() -> None:
    run = Systemctl(1, stderr="Failed to connect to bus: No such file or directory\n")
    with pytest.raises(CommandFailed) as failed:
        failed_units(run)
    assert failed.value.message == (
        "systemctl failed: Failed to connect to bus: No such file or directory"
    )
    error = failed.value.to_error()
    assert error["code"] == ErrorCode.UNAVAILABLE
    assert error["data"]["program"] == "systemctl" and error["data"]["returncode"] == 1
    assert error_from_wire(error).code == ErrorCode.UNAVAILABLE


def test_run_command_runs_a_real_program_with_the_c_locale() -> None:
    done = run_command(["sh", "-c", "echo $LC_ALL; echo oops >&2; exit 3"], 10.0)
    assert (done.returncode, done.stdout, done.stderr) == (3, "C\n", "oops\n")
