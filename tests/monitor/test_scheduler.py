"""The scheduler with scripted checks, a real alerts database and a stepped clock."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import ListFilter, Severity
from cortexd.config.schema import Config, DoctorConfig
from cortexd.host.commands import CommandFailed
from cortexd.monitor.check import Check, Finding, Status
from cortexd.monitor.scheduler import Monitor
from cortexd.monitor.thresholds import Thresholds
from tests.alerts.conftest import FakeClock, make_manager


class Scripted(Check):
    """Reports the next value of a script, or raises when the script says so."""

    category = "test"
    thresholds = Thresholds(80, 75, 90, 85, samples=1)

    def __init__(self, check_id: str, script: list[float | Exception | None]) -> None:
        self.id = check_id
        self.name = check_id
        self.script = list(script)

    def collect(self) -> list[Finding]:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        if step is None:
            return []
        return [Finding(f"value {step}", value=step, labels={"mountpoint": "/x"})]


class Slow(Check):
    id = "slow"
    name = "slow"
    category = "test"

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def collect(self) -> list[Finding]:
        self.release.wait(30)
        return [Finding("finally", status=Status.PASS)]


class Concurrency(Check):
    category = "test"

    def __init__(self, check_id: str, tracker: dict[str, int], lock: threading.Lock) -> None:
        self.id = self.name = check_id
        self.tracker = tracker
        self.lock = lock

    def collect(self) -> list[Finding]:
        with self.lock:
            self.tracker["now"] += 1
            self.tracker["max"] = max(self.tracker["max"], self.tracker["now"])
        threading.Event().wait(0.1)  # stands for blocking work
        with self.lock:
            self.tracker["now"] -= 1
        return [Finding("ok", status=Status.PASS)]


@pytest.fixture
async def alerts(tmp_path: Path, clock: FakeClock) -> AsyncIterator[AlertManager]:
    mgr = make_manager(tmp_path / "alerts.db", clock)
    await mgr.open()
    yield mgr
    await mgr.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def monitor_of(checks: list[Check], alerts: AlertManager, **doctor: float) -> Monitor:
    config = dataclasses.replace(Config(), doctor=DoctorConfig(**doctor))  # type: ignore[arg-type]
    return Monitor(config, lambda c: checks, alerts, clock=alerts.clock)


async def everything(alerts: AlertManager) -> list[dict[str, object]]:
    return [a.to_dict() for a in await alerts.query(ListFilter(include_cleared=True))]


async def test_a_filling_disk_is_one_alert_that_escalates_and_resolves(
    alerts: AlertManager, clock: FakeClock
) -> None:
    check = Scripted("disk", [50, 82, 84, 93, 95, 70])
    monitor = monitor_of([check], alerts)
    seen = []
    for _ in range(6):
        result = await monitor.run_check(check)
        clock.step(30)
        found = await everything(alerts)
        seen.append((result.status.value, [(a["severity"], a["state"]) for a in found]))
    assert seen == [
        ("PASS", []),
        ("WARN", [("WARNING", "firing")]),
        ("WARN", [("WARNING", "firing")]),
        ("FAIL", [("CRITICAL", "firing")]),
        ("FAIL", [("CRITICAL", "firing")]),
        ("PASS", [("CRITICAL", "resolved")]),
    ]
    (alert,) = await everything(alerts)
    assert alert["labels"] == {"check": "disk", "mountpoint": "/x"}
    assert alert["count"] == 4


async def test_flapping_beyond_hysteresis_still_gives_one_alert(
    alerts: AlertManager, clock: FakeClock
) -> None:
    check = Scripted("disk", [70.0, 85.0] * 30)
    monitor = monitor_of([check], alerts)
    statuses = []
    for _ in range(60):
        statuses.append((await monitor.run_check(check)).status)
        clock.step(10)
    assert statuses.count(Status.WARN) == 30  # it really flapped
    assert len(await everything(alerts)) == 1


async def test_three_errors_in_a_row_raise_one_warning_about_the_check(
    alerts: AlertManager, clock: FakeClock
) -> None:
    boom = RuntimeError("probe broke")
    check = Scripted("probe", [boom, boom, boom, boom, boom, 10.0])
    monitor = monitor_of([check], alerts)
    for i in range(5):
        result = await monitor.run_check(check)
        assert result.status is Status.ERROR
        assert "probe broke" in result.message
        about = [a for a in await everything(alerts) if a["source"] == "monitor"]
        assert len(about) == (0 if i < 2 else 1)
    assert about[0]["severity"] == "WARNING"
    assert about[0]["labels"] == {"check": "probe"}
    await monitor.run_check(check)
    about = [a for a in await everything(alerts) if a["source"] == "monitor"]
    assert about[0]["state"] == "resolved"


async def test_a_check_past_its_timeout_is_error_and_stalls_nobody(
    alerts: AlertManager,
) -> None:
    release = threading.Event()
    slow = Slow(release)
    fast = Scripted("fast", [10.0])
    monitor = monitor_of([slow, fast], alerts, timeout_seconds=0.5, max_parallel=2)
    try:
        results = await monitor.run_many([slow, fast])
    finally:
        release.set()
    assert [r.status for r in results] == [Status.ERROR, Status.PASS]
    assert "timed out" in results[0].message


async def test_no_more_than_max_parallel_checks_run_at_once(alerts: AlertManager) -> None:
    tracker = {"now": 0, "max": 0}
    lock = threading.Lock()
    checks: list[Check] = [Concurrency(f"c{i}", tracker, lock) for i in range(8)]
    monitor = monitor_of(checks, alerts, max_parallel=3)
    results = await monitor.run_many(checks)
    assert all(r.status is Status.PASS for r in results)
    assert tracker["max"] == 3


async def test_a_vanished_subject_resolves_its_alert(alerts: AlertManager) -> None:
    check = Scripted("disk", [95.0, None])
    monitor = monitor_of([check], alerts)
    await monitor.run_check(check)
    assert [a["state"] for a in await everything(alerts)] == ["firing"]
    await monitor.run_check(check)
    assert [a["state"] for a in await everything(alerts)] == ["resolved"]


async def test_snapshot_survives_a_restart_marked_stale(tmp_path: Path, clock: FakeClock) -> None:
    first = make_manager(tmp_path / "a.db", clock)
    await first.open()
    check = Scripted("disk", [82.0])
    monitor = monitor_of([check], first)
    await monitor.run_check(check)
    await monitor.stop()
    await first.stop()
    second = make_manager(tmp_path / "a.db", clock)
    await second.open()
    again = monitor_of([Scripted("disk", [])], second)
    await again._load_snapshot()
    await second.stop()
    assert again.results["disk"].status is Status.WARN
    assert again.results["disk"].stale


def test_severity_of_fail_is_the_checks_choice() -> None:
    assert Scripted("x", []).fail_severity is Severity.CRITICAL


class Counting(Check):
    category = "test"

    def __init__(self, check_id: str, interval: float, first_run_delay: float = 0.0) -> None:
        self.id = self.name = check_id
        self.interval = interval
        self.first_run_delay = first_run_delay
        self.runs = 0
        self.fifth_run = anyio.Event()

    def collect(self) -> list[Finding]:
        self.runs += 1
        if self.runs == 5:
            anyio.from_thread.run_sync(self.fifth_run.set)  # runs on an anyio worker thread
        return [Finding(f"run {self.runs}", status=Status.PASS)]


async def test_each_check_runs_at_start_up_then_at_its_own_interval(
    alerts: AlertManager,
) -> None:
    fast = Counting("fast", 0.05)
    slow = Counting("slow", 3600)
    later = Counting("later", 0.05, first_run_delay=3600)
    monitor = monitor_of([fast, slow, later], alerts)
    async with anyio.create_task_group() as tg:
        await monitor.start(tg)
        with anyio.fail_after(20):
            await fast.fifth_run.wait()
        tg.cancel_scope.cancel()
    assert slow.runs == 1  # at start-up only
    assert later.runs == 0  # its first run is deferred
    assert monitor.results["fast"].message.startswith("run ")
    assert "later" not in monitor.results


async def test_a_reload_takes_new_thresholds_and_keeps_raised_levels(
    alerts: AlertManager,
) -> None:
    check = Scripted("disk", [82.0, 82.0])
    current: list[Check] = [check]
    config = dataclasses.replace(Config(), doctor=DoctorConfig())
    monitor = Monitor(config, lambda c: current, alerts, clock=alerts.clock)
    assert (await monitor.run_check(check)).status is Status.WARN
    stricter = Scripted("disk", [82.0])
    stricter.thresholds = Thresholds(60, 55, 81, 70, samples=1)
    current[:] = [stricter]
    monitor.apply_config(config)
    assert (await monitor.run_check(monitor.checks["disk"])).status is Status.FAIL
    (alert,) = await everything(alerts)
    assert alert["severity"] == "CRITICAL"


class Pending(Check):
    id = name = "apt_updates_like"
    category = "test"

    def collect(self) -> list[Finding]:
        return [Finding("3 updates pending", status=Status.WARN, severity=Severity.INFO)]


async def test_a_findings_own_severity_wins_even_info(alerts: AlertManager) -> None:
    check = Pending()
    await monitor_of([check], alerts).run_check(check)
    (alert,) = await everything(alerts)
    assert alert["severity"] == "INFO"


class Ticks:
    """A monotonic clock the test steps by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Windowed(Check):
    """Holds state between runs, like cpu_usage's window; built from `source`."""

    category = "test"

    def __init__(self, check_id: str, interval: float, source: object = "same") -> None:
        self.id = self.name = check_id
        self.interval = interval
        self.built_from = source
        self.samples: list[float] = []

    def collect(self) -> list[Finding]:
        self.samples.append(len(self.samples))
        return [Finding(f"{len(self.samples)} samples", status=Status.PASS)]


def scheduled(monitor: Monitor) -> list[str]:
    return [c.id for c in monitor.due_checks()]


async def test_a_shortened_interval_takes_effect_at_once(alerts: AlertManager) -> None:
    ticks = Ticks()
    current: list[Check] = [Windowed("probe", 600), Windowed("other", 600)]
    monitor = Monitor(Config(), lambda c: current, alerts, clock=alerts.clock, monotonic=ticks)
    assert scheduled(monitor) == ["probe", "other"]  # at start-up
    ticks.now += 10
    assert scheduled(monitor) == []
    current[:] = [Windowed("probe", 5), Windowed("other", 900)]
    monitor.apply_config(Config())
    # min(old due, now + new interval): 5 s from the reload, not 600 from the last run.
    ticks.now += 4.9
    assert scheduled(monitor) == []
    ticks.now += 0.1
    assert scheduled(monitor) == ["probe"]
    ticks.now += 5
    assert scheduled(monitor) == ["probe"]
    # A longer interval never delays the run that was already due sooner.
    ticks.now = 1000 + 599
    assert "other" not in scheduled(monitor)
    ticks.now += 1
    assert "other" in scheduled(monitor)
    assert monitor.next_run("other") == alerts.clock() + 900


async def test_a_reload_keeps_the_state_of_unchanged_checks(alerts: AlertManager) -> None:
    ticks = Ticks()
    kept, rebuilt = Windowed("kept", 10), Windowed("rebuilt", 10, source="a")
    current: list[Check] = [kept, rebuilt]
    monitor = Monitor(Config(), lambda c: current, alerts, clock=alerts.clock, monotonic=ticks)
    for check in (kept, rebuilt):
        await monitor.run_check(check)
        await monitor.run_check(check)
    fresh_kept = Windowed("kept", 20)
    fresh_kept.thresholds = Thresholds(50, 40, 60, 55, samples=1)
    current[:] = [fresh_kept, Windowed("rebuilt", 10, source="b")]
    monitor.apply_config(Config())
    assert monitor.checks["kept"] is kept
    assert kept.samples == [0, 1]  # its state survived the reload
    assert kept.interval == 20 and kept.thresholds == fresh_kept.thresholds
    assert monitor.checks["rebuilt"] is not rebuilt  # built from other settings
    # The same holds for a reload of another source (plugins.reload).
    monitor.refresh_checks()
    assert monitor.checks["kept"] is kept


async def test_cpu_usage_keeps_its_window_across_a_config_reload(alerts: AlertManager) -> None:
    from cortexd.config.schema import AlertsConfig, ChecksConfig, CheckSettings
    from cortexd.monitor.checks.metrics import CpuUsage
    from cortexd.monitor.registry import build_checks

    monitor = Monitor(Config(), build_checks, alerts, clock=alerts.clock)
    cpu = monitor.checks["cpu_usage"]
    assert isinstance(cpu, CpuUsage)
    await monitor.run_check(cpu)
    first = cpu._samples[0]
    other = dataclasses.replace(Config(), alerts=AlertsConfig(coalesce_seconds=5))
    monitor.apply_config(other)
    assert monitor.checks["cpu_usage"] is cpu
    await monitor.run_check(monitor.checks["cpu_usage"])
    assert cpu._samples[0] == first and len(cpu._samples) == 3  # the window goes on
    stricter = dataclasses.replace(
        other,
        checks=ChecksConfig(
            cpu_usage=CheckSettings(warning=85, warning_clear=75, interval_seconds=2)
        ),
    )
    monitor.apply_config(stricter)
    assert monitor.checks["cpu_usage"] is cpu
    assert cpu.interval == 2
    assert cpu.thresholds is not None and cpu.thresholds.warning == 85
    moved = dataclasses.replace(
        stricter, checks=ChecksConfig(disk_space=CheckSettings(exclude=("/boot",)))
    )
    disk = monitor.checks["disk_space"]
    monitor.apply_config(moved)
    assert monitor.checks["disk_space"] is not disk  # built from other settings


async def test_changed_package_files_rerun_the_update_checks_once_settled(
    alerts: AlertManager, tmp_path: Path
) -> None:
    from cortexd.host.commands import CommandResult
    from cortexd.host.pending import PendingUpdates
    from cortexd.monitor.checks.packages import AptUpdates, SecurityUpdates
    from cortexd.monitor.scheduler import PACKAGE_SETTLE_SECONDS

    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "x_InRelease").write_text("")
    status = tmp_path / "status"
    status.write_text("")
    line = "Inst libfoo1 [1.0-1] (1.0-2 Debian:12.8/stable [amd64])\n"
    pending = PendingUpdates(
        lambda argv, timeout: CommandResult(0, line, ""),
        lists_dir=str(tmp_path / "lists"),
        dpkg_status=str(status),
        clock=alerts.clock,
    )
    ticks = Ticks()
    checks: list[Check] = [AptUpdates(pending), SecurityUpdates(pending)]
    monitor = Monitor(
        Config(), lambda c: checks, alerts, clock=alerts.clock, monotonic=ticks, pending=pending
    )
    view = monitor.updates_view()
    assert view["state"] == "not_checked" and view["next_check_at"] is None
    assert scheduled(monitor) == []  # the package scans wait a little after start-up
    assert view != monitor.updates_view()  # now placed: it says when
    assert monitor.updates_view()["next_check_at"] == alerts.clock() + 30
    ticks.now += 30
    for check in monitor.due_checks():
        await monitor.run_check(check)
    assert monitor.updates_view()["pending"] == 1

    st = status.stat()
    os.utime(status, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))  # dpkg ran
    monitor.packages_seen(pending.look())
    view = monitor.updates_view()
    assert view["state"] == "changed" and view["pending"] is None
    assert view["changed_at"] == alerts.clock()
    ticks.now += PACKAGE_SETTLE_SECONDS - 1
    monitor.packages_seen(pending.look())
    assert scheduled(monitor) == []  # still settling
    ticks.now += 1
    monitor.packages_seen(pending.look())
    assert scheduled(monitor) == ["apt_updates", "security_updates"]
    ticks.now += 60
    monitor.packages_seen(pending.look())
    assert scheduled(monitor) == []  # once per change, not at every look


class Gated(Check):
    """Reports the next value of a script; each run waits for its gate first."""

    id = name = "gated"
    category = "test"
    thresholds = Thresholds(80, 75, 90, 85, samples=1)

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()

    def collect(self) -> list[Finding]:
        self.started.release()
        self.gate.wait(30)
        value = self.values.pop(0)
        return [Finding(f"value {value}", value=value, labels={"mountpoint": "/x"})]


async def test_a_run_asked_for_while_an_older_one_runs_reports_a_fresh_result(
    alerts: AlertManager,
) -> None:
    # The condition changes while a run that began before it is in flight: the
    # caller who asked after the change gets a run of its own, not the older answer.
    check = Gated([10.0, 95.0])
    monitor = monitor_of([check], alerts, max_parallel=2)
    got: dict[str, str] = {}

    async def ask(name: str) -> None:
        got[name] = (await monitor.run_check(check)).message

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "older")
        await anyio.to_thread.run_sync(check.started.acquire)
        tg.start_soon(ask, "newer")
        await anyio.sleep(0.05)  # the newer request is waiting on the older run
        check.gate.set()
    assert got == {"older": "value 10.0", "newer": "value 95.0"}
    assert check.values == []


class StoppedMidway(Check):
    """Runs a command the shutdown ends, as the package checks' apt simulation does."""

    id = name = "apt_like"
    category = "test"

    def __init__(self, running: threading.Event, release: threading.Event) -> None:
        self.running = running
        self.release = release

    def collect(self) -> list[Finding]:
        self.running.set()
        self.release.wait(30)
        raise CommandFailed("the command runner is stopping")


async def test_a_check_the_shutdown_interrupts_is_no_error_in_the_log(
    alerts: AlertManager, caplog: pytest.LogCaptureFixture
) -> None:
    running, release = threading.Event(), threading.Event()
    check = StoppedMidway(running, release)
    monitor = monitor_of([check], alerts)
    results = []

    async def run() -> None:
        results.append(await monitor.run_check(check))

    caplog.set_level(logging.INFO, logger="cortexd.monitor")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.to_thread.run_sync(running.wait, 30)
        await monitor.stop()
        release.set()
    assert results[0].status is Status.ERROR
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "check apt_like interrupted by the shutdown" in caplog.text
