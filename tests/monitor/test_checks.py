"""The built-in checks against this machine's real /proc, dpkg and apt.

Broken package states cannot be created safely on the test machine, so for
those the command runner is injected with recorded output; systemd is not
PID 1 here, so `systemd_failed` is exercised on recorded `systemctl` output.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cortexd.config.schema import ChecksConfig, CheckSettings, Config
from cortexd.host import packages as host_packages
from cortexd.host.commands import (
    CommandFailed,
    CommandResult,
    CommandRunner,
    Runner,
    run_command,
)
from cortexd.host.pending import PendingUpdates
from cortexd.monitor.check import Status
from cortexd.monitor.checks import disk, metrics, packages, system
from cortexd.monitor.registry import build_checks

DATA = Path(__file__).parent / "data"


def recorded(stdout: str, returncode: int = 0, stderr: str = "") -> Runner:
    def runner(argv: Sequence[str], timeout: float) -> CommandResult:
        return CommandResult(returncode, stdout, stderr)

    return runner


def test_fast_metric_checks_read_real_proc() -> None:
    checks = [
        metrics.CpuUsage(),
        metrics.CpuLoad(),
        metrics.Memory(),
        metrics.SwapUsage(),
        metrics.FileDescriptors(),
        metrics.ZombieProcesses(),
        metrics.ProcessCount(),
    ]
    for check in checks:
        (finding,) = check.collect()
        assert finding.message
        if finding.value is not None:
            assert finding.value >= 0
    (procs,) = metrics.ProcessCount().collect()
    assert procs.details["processes"] == len([p for p in os.listdir("/proc") if p.isdigit()])
    (mem,) = metrics.Memory().collect()
    assert 0 < mem.details["used_percent"] < 100


def test_disk_space_sees_root_and_skips_pseudo_filesystems() -> None:
    check = disk.DiskSpace()
    mounts = {mp: fstype for _, mp, fstype in check.mounts()}
    assert "/" in mounts
    assert not set(mounts.values()) & disk.PSEUDO_FILESYSTEMS
    findings = check.collect()
    root = next(f for f in findings if f.labels["mountpoint"] == "/")
    stat = os.statvfs("/")
    assert root.details["total_bytes"] == stat.f_blocks * stat.f_frsize


def test_disk_space_reports_an_included_mountpoint_that_is_missing(tmp_path: Path) -> None:
    check = disk.DiskSpace(include=[str(tmp_path / "nowhere")], exclude=["/"])
    findings = {f.labels.get("mountpoint"): f for f in check.collect()}
    assert "/" not in findings
    assert findings[str(tmp_path / "nowhere")].status is Status.WARN


def test_real_apt_and_dpkg_on_this_machine_are_consistent() -> None:
    (status,) = packages.AptStatus().collect()
    assert status.status is Status.PASS, status.message
    (deps,) = packages.DependencyConflicts().collect()
    assert deps.status is Status.PASS, deps.message


def test_apt_status_reports_an_interrupted_dpkg_and_a_failing_audit(tmp_path: Path) -> None:
    (tmp_path / "updates").mkdir()
    (tmp_path / "updates" / "0001").write_text("")
    audit = "The following packages are only half configured:\n foo   a package\n"
    (finding,) = packages.AptStatus(recorded(audit), dpkg_dir=str(tmp_path)).collect()
    assert finding.status is Status.FAIL
    assert "dpkg --configure -a" in finding.message
    assert "half configured" in finding.message
    assert finding.details["interrupted"] is True


def test_held_lock_is_found_through_proc_locks(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    with open(lock, "w") as fh:
        fcntl.lockf(fh, fcntl.LOCK_EX)
        assert host_packages.held_locks([str(lock)]) == {str(lock): os.getpid()}
    assert host_packages.held_locks([str(lock)]) == {}


def test_dependency_conflicts_reports_broken_packages() -> None:
    broken = (
        "Reading package lists...\nBuilding dependency tree...\n"
        "You might want to run 'apt --fix-broken install' to correct these.\n"
        "The following packages have unmet dependencies:\n"
        " foo : Depends: libbar (>= 2) but 1 is installed\n"
    )
    (finding,) = packages.DependencyConflicts(
        recorded(broken, 100, "E: Unmet dependencies.")
    ).collect()
    assert finding.status is Status.FAIL
    assert "libbar" in " ".join(finding.details["problems"])


def test_pending_updates_split_security_ones_from_the_real_simulation() -> None:
    done = run_command(["apt-get", "-o", "Debug::NoLocking=1", "-s", "dist-upgrade"], 300)
    assert done.returncode == 0, done.stderr
    parsed = packages.parse_simulation(done.stdout)
    assert len(parsed) == done.stdout.count("\nInst ") + done.stdout.startswith("Inst ")
    # The real simulation's output, run once, feeds both checks.
    (updates,) = packages.AptUpdates(PendingUpdates(recorded(done.stdout))).collect()
    assert updates.details["pending"] == len(parsed)
    (security,) = packages.SecurityUpdates(PendingUpdates(recorded(done.stdout))).collect()
    assert security.details["security"] == sum(u.security for u in parsed)
    if parsed:
        assert updates.status is Status.WARN
        assert updates.severity is not None and updates.severity.name == "INFO"


def test_parse_simulation_marks_security_origins() -> None:
    text = (
        "Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.15/oldstable [amd64])\n"
        "Inst liblzma5 [5.4.1-1] (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64])\n"
        "Conf bash (5.2.15-2+b13 Debian:12.15/oldstable [amd64])\n"
    )
    found = packages.parse_simulation(text)
    assert [(u.package, u.security) for u in found] == [("bash", False), ("liblzma5", True)]


def test_cve_scan_is_skip_without_data_and_grades_a_debsecan_report(tmp_path: Path) -> None:
    (skip,) = packages.CveScan(data_path=str(tmp_path / "missing")).collect()
    assert skip.status is Status.SKIP
    if not os.path.exists("/usr/bin/debsecan"):
        (nothing,) = packages.CveScan().collect()
        assert nothing.status is Status.SKIP
        assert "debsecan" in nothing.message
    (found,) = packages.CveScan(data_path=str(DATA / "debsecan-summary.txt")).collect()
    assert found.status is Status.FAIL
    assert found.details["total"] == 7
    assert found.details["fixable"] == 3
    assert found.details["high_urgency_fixable"] == 2
    assert found.details["cves"] == ["CVE-2023-4911", "CVE-2024-2961"]


def test_systemd_failed_is_skip_here_and_parses_recorded_output(tmp_path: Path) -> None:
    (here,) = system.SystemdFailed().collect()
    if not os.path.isdir("/run/systemd/system"):
        assert here.status is Status.SKIP
        assert "not PID 1" in here.message
    # Stand-in runtime dir: systemd is not PID 1 on the test machine.
    fake = system.SystemdFailed(
        recorded((DATA / "systemctl-failed.txt").read_text()), runtime_dir=str(tmp_path)
    )
    findings = fake.collect()
    assert [f.labels["unit"] for f in findings] == [
        "nginx.service",
        "systemd-networkd-wait-online.service",
    ]
    assert all(f.status is Status.FAIL for f in findings)
    bullets = system.parse_failed_units((DATA / "systemctl-failed-bullets.txt").read_text())
    assert bullets[0]["unit"] == "logrotate.service"
    assert bullets[0]["description"] == "Rotate log files"
    (none,) = system.SystemdFailed(recorded(""), runtime_dir=str(tmp_path)).collect()
    assert none.status is Status.PASS


def test_time_sync_asks_the_kernel() -> None:
    state, _, _ = system.kernel_clock_state()
    (finding,) = system.TimeSync().collect()
    assert finding.details["state"] == state
    assert finding.status in (Status.PASS, Status.WARN)


def test_dns_and_connectivity_against_loopback() -> None:
    (dns,) = system.DnsResolution(["localhost"]).collect()
    assert dns.status is Status.PASS
    (bad,) = system.DnsResolution(["no-such-host.invalid"]).collect()
    assert bad.status is Status.FAIL
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        (up,) = system.NetworkConnectivity([f"127.0.0.1:{port}"]).collect()
    assert up.details["reached_ms"].keys() == {f"127.0.0.1:{port}"}
    assert up.status in (Status.PASS, Status.WARN)  # WARN only without a default route
    (down,) = system.NetworkConnectivity([f"127.0.0.1:{port}"]).collect()
    assert down.status is Status.FAIL


def test_reboot_required_reads_the_flag_and_its_packages(tmp_path: Path) -> None:
    flag = tmp_path / "reboot-required"
    (clear,) = system.RebootRequired(str(flag)).collect()
    assert clear.status is Status.PASS
    flag.write_text("*** System restart required ***\n")
    (tmp_path / "reboot-required.pkgs").write_text("linux-image-6.1.0-9-amd64\nlibc6\nlibc6\n")
    (needed,) = system.RebootRequired(str(flag)).collect()
    assert needed.status is Status.WARN
    assert needed.details["packages"] == ["libc6", "linux-image-6.1.0-9-amd64"]


def test_registry_builds_every_check_with_configured_settings() -> None:
    config = Config(
        checks=ChecksConfig(
            disk_space=CheckSettings(warning=60, warning_clear=55, interval_seconds=2),
            zombie_processes=CheckSettings(enabled=False),
            memory=CheckSettings(warning_clear=99),  # contradicts warning: ignored
        )
    )
    checks = {c.id: c for c in build_checks(config)}
    assert len(checks) == 18
    assert checks["disk_space"].interval == 2
    assert checks["disk_space"].thresholds is not None
    assert checks["disk_space"].thresholds.warning == 60
    assert checks["zombie_processes"].enabled is False
    assert checks["memory"].thresholds is not None
    assert checks["memory"].thresholds.warning_clear == 80


def test_one_simulation_serves_both_update_checks() -> None:
    calls: list[Sequence[str]] = []
    text = (
        "Inst liblzma5 [5.4.1-1] (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64])\n"
    )

    def runner(argv: Sequence[str], timeout: float) -> CommandResult:
        calls.append(argv)
        return CommandResult(0, text, "")

    shared = PendingUpdates(runner)
    (pending,) = packages.AptUpdates(shared).collect()
    (security,) = packages.SecurityUpdates(shared).collect()
    assert pending.details["pending"] == security.details["security"] == 1
    assert len(calls) == 1


def test_stopping_kills_a_running_command() -> None:
    runner = CommandRunner()
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(runner(["sleep", "60"], 120))
        except Exception as exc:  # what the thread saw
            outcome.append(exc)

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    while not runner._children and time.monotonic() - started < 10:
        threading.Event().wait(0.01)
    runner.kill_all()
    thread.join(20)
    assert not thread.is_alive()
    (result,) = outcome
    assert isinstance(result, CommandResult) and result.returncode != 0
    assert time.monotonic() - started < 30  # nowhere near the 60 s sleep
    try:
        runner(["true"], 5)
    except CommandFailed as exc:
        assert "stopping" in str(exc)
    else:
        raise AssertionError("a stopped runner still ran a command")


def test_cpu_usage_is_graded_only_once_its_window_has_samples() -> None:
    (early,) = metrics.CpuUsage().collect()
    assert early.status is Status.SKIP
    assert 0 <= early.details["usage_percent"] <= 100
    (graded,) = metrics.CpuUsage(min_window=0).collect()
    assert graded.status is None and graded.value is not None
    assert 0 <= graded.value <= 100
