"""The shared upgrade scan: when it is reused and when it no longer holds.

apt is injected (a recorded simulation that counts its runs); dpkg's status
file and the package lists are files of the test's own, never the host's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from cortexd.host.commands import CommandFailed, CommandResult
from cortexd.host.pending import PendingUpdates
from cortexd.monitor.checks import packages
from tests.alerts.conftest import FakeClock

TWO_UPGRADES = (
    "Inst openssl [3.0.11-1] (3.0.15-1 Debian-Security:12/stable-security [amd64])\n"
    "Inst libfoo1 [1.0-1] (1.0-2 Debian:12.8/stable [amd64])\n"
)


class Apt:
    """Answers the simulation with `text` and counts the runs."""

    def __init__(self, text: str = TWO_UPGRADES) -> None:
        self.text = text
        self.runs: list[Sequence[str]] = []
        self.returncode = 0
        self.during: threading.Event | None = None

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.runs.append(argv)
        if self.during is not None:
            self.during.set()
        return CommandResult(self.returncode, self.text, "E: broken sources")


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "deb.example_dists_stable_InRelease").write_text("")
    (tmp_path / "status").write_text("Package: openssl\n")
    return tmp_path


def pending_on(host: Path, apt: Apt, clock: FakeClock) -> PendingUpdates:
    return PendingUpdates(
        apt,
        apt_command=["/opt/fake/apt-get"],
        lists_dir=str(host / "lists"),
        dpkg_status=str(host / "status"),
        clock=clock,
    )


def touch(path: Path, later: float = 10.0) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(later * 1e9)))


def test_a_scan_is_reused_until_it_is_too_old(host: Path) -> None:
    apt, clock = Apt(), FakeClock()
    pending = pending_on(host, apt, clock)
    first = pending.scan(max_age=60)
    assert [u.package for u in first.upgrades] == ["openssl", "libfoo1"]
    assert [u.package for u in first.security] == ["openssl"]
    assert apt.runs[0][0] == "/opt/fake/apt-get"
    clock.step(59)
    assert pending.scan(max_age=60) is first
    clock.step(2)
    assert pending.scan(max_age=60) is not first
    assert len(apt.runs) == 2


@pytest.mark.parametrize("changed", ["status", "lists"])
def test_a_changed_dpkg_status_or_list_directory_forgets_the_scan(host: Path, changed: str) -> None:
    apt, clock = Apt(), FakeClock()
    pending = pending_on(host, apt, clock)
    first = pending.scan(max_age=86400)
    assert pending.look() == first.stamp
    assert pending.latest is first
    apt.text = TWO_UPGRADES.splitlines()[1] + "\n"
    touch(host / changed)
    pending.look()
    assert pending.latest is None
    assert pending.invalid_since == clock.now
    again = pending.scan(max_age=86400)
    assert [u.package for u in again.upgrades] == ["libfoo1"]
    assert pending.latest is again and pending.invalid_since is None
    assert len(apt.runs) == 2


def test_a_change_is_noticed_by_scan_itself(host: Path) -> None:
    apt, clock = Apt(), FakeClock()
    pending = pending_on(host, apt, clock)
    pending.scan(max_age=86400)
    touch(host / "status")
    pending.scan(max_age=86400)
    assert len(apt.runs) == 2


def test_invalidate_forgets_and_a_scan_running_meanwhile_is_not_kept(host: Path) -> None:
    apt, clock = Apt(), FakeClock()
    pending = pending_on(host, apt, clock)
    pending.scan(max_age=86400)
    pending.invalidate("an update apply ran")
    assert pending.latest is None and pending.invalid_since == clock.now

    # An apply that finishes while apt simulates: that scan saw the old state.
    release = threading.Event()
    apt.during = threading.Event()
    original = apt.__call__

    def slow(argv: Sequence[str], timeout: float) -> CommandResult:
        done = original(argv, timeout)
        release.wait(10)
        return done

    pending.runner = slow
    answered = []
    thread = threading.Thread(target=lambda: answered.append(pending.scan(max_age=0)))
    thread.start()
    assert apt.during.wait(10)
    pending.invalidate("an update apply ran")
    release.set()
    thread.join(10)
    assert answered and answered[0].upgrades  # the caller still gets its answer
    assert pending.latest is None  # but nobody else is served it


def test_a_failed_scan_keeps_nothing_and_says_why(host: Path) -> None:
    apt, clock = Apt(), FakeClock()
    pending = pending_on(host, apt, clock)
    apt.returncode = 100
    with pytest.raises(CommandFailed, match="broken sources"):
        pending.scan(max_age=60)
    assert pending.latest is None
    assert pending.failure is not None and "broken sources" in pending.failure
    apt.returncode = 0
    pending.scan(max_age=60)
    assert pending.failure is None


def test_lists_never_downloaded_is_a_problem_not_an_error(host: Path) -> None:
    apt, clock = Apt(), FakeClock()
    pending = pending_on(host, apt, clock)
    for name in os.listdir(host / "lists"):
        os.unlink(host / "lists" / name)
    scan = pending.scan(max_age=60)
    assert scan.problem is not None and "never downloaded" in scan.problem
    assert apt.runs == []
    (finding,) = packages.AptUpdates(pending).collect()
    assert finding.status is not None and finding.status.value == "SKIP"


def test_new_apt_settings_forget_the_scan(host: Path) -> None:
    apt, clock = Apt(), FakeClock()
    pending = pending_on(host, apt, clock)
    pending.scan(max_age=86400)
    lists, status = str(host / "lists"), str(host / "status")
    pending.configure(apt_command=["/opt/fake/apt-get"], lists_dir=lists, dpkg_status=status)
    assert pending.latest is not None
    pending.configure(apt_command=["/opt/other/apt-get"], lists_dir=lists, dpkg_status=status)
    assert pending.latest is None
    pending.scan(max_age=86400)
    assert apt.runs[-1][0] == "/opt/other/apt-get"
