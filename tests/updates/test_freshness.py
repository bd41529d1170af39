"""`updates.check` and `health` give one answer, and never a stale one, through a real daemon.

apt is the stand-in of test_updates_daemon (canned simulation, recorded
calls); the reboot flag and dpkg's status file are files of the test's own,
named by `checks.reboot_required.data_path` and `updates.dpkg_status_path`,
so nothing here reads or changes the host's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import DaemonProcess, merge, running_daemon
from tests.updates.test_updates_daemon import SIMULATION, WAIT, FakeApt, cortexctl

FIRST_CHECK_DELAY = 30.0  # packages.HEAVY_FIRST_RUN_DELAY


class Host:
    """The files the daemon reads about packages and reboots, in a temp directory."""

    def __init__(self, root: Path) -> None:
        self.flag = root / "reboot-required"
        self.status = root / "dpkg-status"
        self.status.write_text("Package: openssl\nStatus: install ok installed\n")

    def config(self) -> dict[str, Any]:
        return {
            "checks": {"reboot_required": {"data_path": str(self.flag)}},
            "updates": {"dpkg_status_path": str(self.status)},
        }

    def dpkg_ran(self) -> None:
        st = self.status.stat()
        os.utime(self.status, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))


@pytest.fixture
def apt(tmp_path: Path) -> FakeApt:
    return FakeApt(tmp_path)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    (tmp_path / "host").mkdir()
    return Host(tmp_path / "host")


@pytest.fixture
def daemon(apt: FakeApt, host: Host) -> Iterator[DaemonProcess]:
    with running_daemon(merge(apt.config(), host.config())) as running:
        yield running


def simulations(apt: FakeApt) -> int:
    return sum("dist-upgrade" in c for c in apt.calls())


def without(package: str) -> str:
    return "".join(line for line in SIMULATION.splitlines(True) if f" {package} " not in line)


def test_the_reboot_flag_is_read_afresh_while_the_scan_is_cached(
    daemon: DaemonProcess, host: Host
) -> None:
    host.flag.write_text("*** System restart required ***\n")
    Path(f"{host.flag}.pkgs").write_text("linux-image-amd64\nlibc6\n")
    first = daemon.call("updates.check", timeout=WAIT)
    assert first["reboot_required"] is True
    assert first["reboot_packages"] == ["libc6", "linux-image-amd64"]
    (doctor,) = daemon.call("checks.run", {"ids": ["reboot_required"]})["results"]
    assert doctor["status"] == "WARN"

    host.flag.unlink()
    again = daemon.call("updates.check", timeout=WAIT)
    assert again["cached"] is True  # the simulation is reused, the flag is not
    assert again["reboot_required"] is False and again["reboot_packages"] == []
    (doctor,) = daemon.call("checks.run", {"ids": ["reboot_required"]})["results"]
    assert doctor["status"] == "PASS"
    shown = cortexctl(daemon, "update", "check")
    assert shown.returncode == 0, shown.stderr
    assert "Reboot required: No" in shown.stdout
    assert "(cached)" in shown.stdout


def test_a_change_of_dpkg_status_ends_the_cached_answer(
    daemon: DaemonProcess, apt: FakeApt, host: Host
) -> None:
    assert daemon.call("updates.check", timeout=WAIT)["counts"] == {"total": 3, "security": 1}
    assert daemon.call("updates.check", timeout=WAIT)["cached"] is True
    assert simulations(apt) == 1

    # openssl was upgraded by someone else's apt run: dpkg's status changed.
    (apt.root / "simulation.txt").write_text(without("openssl"))
    host.dpkg_ran()
    after = daemon.call("updates.check", timeout=WAIT)
    assert after["cached"] is False
    assert after["counts"] == {"total": 2, "security": 0}
    assert simulations(apt) == 2
    health = daemon.call("health")["updates"]
    assert (health["pending"], health["security"]) == (2, 0)


def test_health_and_update_check_agree_before_and_after_an_apply(
    daemon: DaemonProcess, apt: FakeApt
) -> None:
    checked = daemon.call("updates.check", timeout=WAIT)
    health = daemon.call("health")
    assert health["updates"]["state"] == "checked"
    assert (health["updates"]["pending"], health["updates"]["security"]) == (3, 1)
    assert health["updates"]["checked_at"] == checked["checked_at"]
    assert (health["pending_updates"], health["security_updates"]) == (3, 1)

    # While the confirmed apt run works, libfoo1 stops being pending.
    hold = apt.root / "hold"
    hold.write_text("")
    applied: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: applied.update(
            done=cortexctl(daemon, "update", "apply", "--packages", "--only", "libfoo1", "-y")
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not any("-y" in c.split() for c in apt.calls()):
            assert time.monotonic() < deadline, "the apply never started apt"
            time.sleep(0.05)
        (apt.root / "simulation.txt").write_text(without("libfoo1"))
    finally:
        hold.unlink()
        thread.join(WAIT)
    assert applied["done"].returncode == 0, applied["done"].stderr
    # The scan from before the apply is gone: no figures rather than old ones.
    assert daemon.call("health")["updates"]["pending"] in (None, 2)
    after = daemon.call("updates.check", timeout=WAIT)
    assert after["cached"] is False
    assert after["counts"] == {"total": 2, "security": 1}
    health = daemon.call("health")["updates"]
    assert (health["pending"], health["security"]) == (2, 1)
    shown = cortexctl(daemon, "health")
    assert "2 pending, 1 security" in shown.stdout


def test_health_says_when_the_first_package_check_runs(daemon: DaemonProcess, apt: FakeApt) -> None:
    started = time.time()
    updates = daemon.call("health")["updates"]
    assert updates["state"] == "not_checked"
    assert updates["pending"] is None
    first = updates["next_check_at"]
    assert started - 5 < first <= started + FIRST_CHECK_DELAY + 1
    shown = cortexctl(daemon, "health")
    assert shown.returncode == 0, shown.stderr
    at = time.strftime("%H:%M", time.localtime(first))
    assert f"not checked yet (first check at {at})" in shown.stdout
    assert "None pending" not in shown.stdout

    # The doctor's check scans; health and update check then read that scan.
    daemon.call("checks.run", {"ids": ["apt_updates", "security_updates"]}, timeout=WAIT)
    assert "3 pending, 1 security" in cortexctl(daemon, "health").stdout
    checked = daemon.call("updates.check", timeout=WAIT)
    assert checked["cached"] is True and checked["counts"] == {"total": 3, "security": 1}
    assert simulations(apt) == 1


def test_health_says_why_it_has_no_figures(apt: FakeApt, host: Host) -> None:
    broken = merge(apt.config(), host.config())
    for name in os.listdir(apt.lists):
        os.unlink(apt.lists / name)
    with running_daemon(merge(broken, {"checks": {"apt_updates": {"enabled": False}}})) as d:
        assert d.call("health")["updates"]["state"] == "not_checked"  # security_updates runs
        d.call("checks.run", {"ids": ["security_updates"]}, timeout=WAIT)
        updates = d.call("health")["updates"]
        assert updates["state"] == "unavailable"
        assert "never downloaded" in updates["problem"]
        assert "unknown: package lists were never downloaded" in cortexctl(d, "health").stdout
    off = {"checks": {"apt_updates": {"enabled": False}, "security_updates": {"enabled": False}}}
    with running_daemon(merge(apt.config(), off)) as d:
        assert d.call("health")["updates"]["state"] == "disabled"
        assert "not checked (apt_updates is disabled)" in cortexctl(d, "health").stdout
