"""The monitor: runs each check at its own interval and feeds the alert manager.

Every check runs once at start-up, then every `interval` seconds. `collect()`
runs on a worker thread; at most `doctor.max_parallel` checks run at once,
each bounded by its timeout (`doctor.timeout_seconds` unless the check sets
its own). A timeout or an exception is that check's ERROR, never the
daemon's: a check that stays ERROR three runs in a row raises one WARNING
alert about itself. A run of a check already running waits for that run
instead of starting a second one.

A reload (of the config or of the plugins) keeps the running instance of
every check built from unchanged settings, with what it holds (cpu_usage's
5-minute window); graded levels, error counts and alerts are kept for every
check that still exists. A changed interval takes effect at once: the next
run is at the earlier of the old due time and now plus the new interval.

The pending-updates scan (`PendingUpdates`) is the monitor's too: a light
look every few seconds notices when dpkg's status or the package lists
changed, and once they have been quiet for a while the two update checks run
again, so `health` never serves figures the system has moved past.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Severity, fingerprint
from cortexd.config.schema import Config
from cortexd.host.commands import CommandRunner
from cortexd.host.pending import PendingUpdates, Stamp
from cortexd.monitor.check import Check, CheckResult, Finding, Status, worst
from cortexd.monitor.health import HealthSnapshot, build_health
from cortexd.monitor.thresholds import LevelTracker
from cortexd.protocol import CortexError

log = logging.getLogger(__name__)

ERRORS_BEFORE_ALERT = 3
MAX_IDLE = 1.0
SNAPSHOT_KEY = "monitor.results"
# Threads of checks that ran past their timeout keep running until their own
# subprocess timeouts end them; this bounds how many such threads can pile up.
THREADS_PER_SLOT = 4
UPDATE_CHECKS = ("apt_updates", "security_updates")
# How often the package files are looked at (two stat calls), and how long
# they must stay unchanged after a change before the update checks run again
# (an apt run changes dpkg's status many times over minutes).
PACKAGE_WATCH_SECONDS = 5.0
PACKAGE_SETTLE_SECONDS = 10.0

Builder = Callable[[Config], list[Check]]


class Monitor:
    """Schedules the checks, grades their findings and raises or resolves alerts."""

    name = "monitor"

    def __init__(
        self,
        config: Config,
        build: Builder,
        alerts: AlertManager,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        pending: PendingUpdates | None = None,
    ) -> None:
        self.config = config
        self._build = build
        self.alerts = alerts
        self.clock = clock
        self.monotonic = monotonic
        self.pending = pending or PendingUpdates(clock=clock)
        # Other features add checks (repair, plugins) and watch runs (hooks).
        self._sources: list[Builder] = []
        self.before_check: list[Callable[[Check], Awaitable[None]]] = []
        self.after_check: list[Callable[[CheckResult], Awaitable[None]]] = []
        self.checks: dict[str, Check] = {c.id: c for c in build(config)}
        self.results: dict[str, CheckResult] = {}
        # What `health` serves; every change to `results` invalidates it.
        self.health = HealthSnapshot(self._health_document)
        self._trackers: dict[tuple[str, str], LevelTracker] = {}
        self._subjects: dict[str, dict[str, dict[str, str]]] = {}
        self._errors: dict[str, int] = {}
        # Check id -> (when its run began, set when it ends).
        self._running: dict[str, tuple[float, anyio.Event]] = {}
        self._sem = anyio.Semaphore(config.doctor.max_parallel)
        self._threads = anyio.CapacityLimiter(config.doctor.max_parallel * THREADS_PER_SLOT)
        self._due: dict[str, float] = {}
        self._tg: TaskGroup | None = None
        self._state = "starting"
        self.runs = 0
        self._package_stamp: Stamp | None = None
        self._packages_quiet_since = monotonic()
        self._rescanned_for: float | None = None

    # -- lifecycle -------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        await self._load_snapshot()
        self._adopt_open_alerts()
        tg.start_soon(self._loop)
        tg.start_soon(self._watch_packages)
        self._state = "running"

    def apply_config(self, config: Config) -> None:
        """Take new intervals, thresholds and lists; unchanged checks keep their state."""
        self.config = config
        self.pending.configure(
            apt_command=config.updates.apt_command,
            lists_dir=config.updates.apt_lists_dir,
            dpkg_status=config.updates.dpkg_status_path,
        )
        self._install(self._built(config))

    def add_checks(self, source: Builder) -> None:
        """Let another feature contribute checks, built now and again on each reload."""
        self._sources.append(source)
        self.refresh_checks()

    def refresh_checks(self) -> None:
        """Rebuild the checks of every source (e.g. after plugins were reloaded)."""
        self._install(self._built(self.config))

    def _install(self, built: dict[str, Check]) -> None:
        now = self.monotonic()
        installed: dict[str, Check] = {}
        for check_id, new in built.items():
            old = self.checks.get(check_id)
            check = new
            if old is not None:
                old_interval = old.interval
                if _same_build(old, new):
                    old.interval, old.timeout = new.interval, new.timeout
                    old.thresholds, old.enabled = new.thresholds, new.enabled
                    check = old
                due = self._due.get(check_id)
                if due is not None and check.interval != old_interval:
                    self._due[check_id] = min(due, now + check.interval)
            installed[check_id] = check
        self.checks = installed
        for (check_id, _), tracker in self._trackers.items():
            found = installed.get(check_id)
            if found is not None and found.thresholds is not None:
                tracker.thresholds = found.thresholds
        self._due = {k: v for k, v in self._due.items() if k in installed}
        self._sweep_soon()

    # -- alerts of checks that no longer run -------------------------------

    def _adopt_open_alerts(self) -> None:
        """Take over the alerts a previous run left open, so their conditions can clear.

        A subject that vanished while the daemon was down (an unmounted
        filesystem) then clears at the check's first run, and a check that
        stopped failing clears its "keeps failing" alert.
        """
        for alert in self.alerts.open_alerts():
            check_id = alert.labels.get("check")
            if check_id is None:
                continue
            if alert.source == "monitor":
                self._errors[check_id] = max(self._errors.get(check_id, 0), ERRORS_BEFORE_ALERT)
            elif alert.source == check_id:
                self._subjects.setdefault(check_id, {})[alert.fingerprint] = dict(alert.labels)

    def _sweep_soon(self) -> None:
        if self._tg is not None and self._state == "running":
            self._tg.start_soon(self.resolve_orphans)

    async def resolve_orphans(self) -> int:
        """Resolve the alerts of checks that no longer run (removed, disabled, unloaded).

        Returns how many were resolved.
        """
        resolved = 0
        for alert in self.alerts.open_alerts():
            check_id = alert.labels.get("check")
            owned = alert.source in ("monitor", check_id)
            if check_id is None or not owned or check_id in self.checks:
                continue
            try:
                done = await self.alerts.condition_cleared(
                    source=alert.source,
                    labels=alert.labels,
                    description=f"check {check_id} no longer runs (removed or disabled)",
                )
            except CortexError as exc:
                log.warning("alert of removed check %s not resolved: %s", check_id, exc.message)
                continue
            resolved += done is not None
            self._subjects.pop(check_id, None)
            self._errors.pop(check_id, None)
        if resolved:
            log.info("%d alerts of checks that no longer run resolved", resolved)
        return resolved

    def _built(self, config: Config) -> dict[str, Check]:
        checks = {c.id: c for c in self._build(config)}
        for source in self._sources:
            try:
                extra = source(config)
            except Exception:  # isolation boundary: a feature's checks failing to build
                log.exception("building extra checks failed")
                continue
            for check in extra:
                checks.setdefault(check.id, check)
        return checks

    async def _observe(self, observers: list[Callable[[Any], Awaitable[None]]], item: Any) -> None:
        for observer in list(observers):
            try:
                await observer(item)
            except Exception:  # isolation boundary: an observer's bug never fails the check
                log.exception("check observer failed")

    async def stop(self) -> None:
        """Persist the last results so `health` has them after a restart."""
        self._state = "stopped"
        for check in self.checks.values():
            check.close()
        if isinstance(self.pending.runner, CommandRunner):
            self.pending.runner.kill_all()
        payload = orjson.dumps([r.to_dict() for r in self.results.values()])
        try:
            await self.alerts.put_blob(SNAPSHOT_KEY, payload)
        except CortexError as exc:  # a full disk or failed store: expected, said plainly
            log.warning("health snapshot not persisted: %s", exc.message)
        except Exception:  # isolation boundary: shutdown goes on without the snapshot
            log.exception("could not persist the health snapshot")

    async def _load_snapshot(self) -> None:
        try:
            raw = await self.alerts.get_blob(SNAPSHOT_KEY)
            if raw:
                for item in orjson.loads(raw):
                    result = CheckResult.from_dict(item, stale=True)
                    if result.check_id in self.checks:
                        self.results[result.check_id] = result
                self.health.invalidate()
        except CortexError as exc:  # the alerts database failed to open
            log.warning("last health snapshot not loaded: %s", exc.message)
        except Exception:  # isolation boundary: a bad snapshot only costs history
            log.exception("could not load the last health snapshot")

    def _health_document(self) -> dict[str, Any]:
        return build_health(self.results, self.alerts.state(), updates=self.updates_view())

    @property
    def running(self) -> bool:
        """True between start and stop: the checks are being scheduled."""
        return self._state == "running"

    def state(self) -> dict[str, Any]:
        statuses = {s.value: 0 for s in Status}
        for result in self.results.values():
            statuses[result.status.value] += 1
        return {
            "state": self._state,
            "checks": len(self.checks),
            "running": sorted(self._running),
            "runs": self.runs,
            "statuses": statuses,
            "max_parallel": self.config.doctor.max_parallel,
        }

    # -- scheduling ------------------------------------------------------

    def due_checks(self) -> list[Check]:
        """The checks whose time has come; each one's next run is set an interval on."""
        now = self.monotonic()
        due_now = []
        for check in list(self.checks.values()):
            due = self._due.setdefault(check.id, now + check.first_run_delay)
            if due <= now and check.id not in self._running:
                self._due[check.id] = now + check.interval
                due_now.append(check)
        return due_now

    def next_run(self, check_id: str) -> float | None:
        """When `check_id` runs next (wall time), once the scheduler has placed it."""
        due = self._due.get(check_id)
        if due is None:
            return None
        return self.clock() + max(0.0, due - self.monotonic())

    async def _loop(self) -> None:
        while True:
            assert self._tg is not None
            for check in self.due_checks():
                self._tg.start_soon(self._scheduled, check)
            now = self.monotonic()
            upcoming = min(self._due.values(), default=now + MAX_IDLE)
            await anyio.sleep(max(0.01, min(MAX_IDLE, upcoming - now)))

    # -- pending updates ---------------------------------------------------

    async def _watch_packages(self) -> None:
        while True:
            await anyio.sleep(PACKAGE_WATCH_SECONDS)
            try:
                stamp = await anyio.to_thread.run_sync(self.pending.look, limiter=self._threads)
            except Exception:  # isolation boundary: the look is retried next round
                log.exception("looking at the package files failed")
                continue
            self.packages_seen(stamp)

    def packages_seen(self, stamp: Stamp) -> None:
        """Note the package files' stamp; rerun the update checks once they settled.

        The checks run once per invalidation, so a scan that keeps failing is
        retried at the checks' own interval, not at every look.
        """
        now = self.monotonic()
        if stamp != self._package_stamp:
            self._package_stamp = stamp
            self._packages_quiet_since = now
        changed_at = self.pending.invalid_since
        if (
            self.pending.latest is None
            and changed_at is not None
            and changed_at != self._rescanned_for
            and now - self._packages_quiet_since >= PACKAGE_SETTLE_SECONDS
        ):
            self._rescanned_for = changed_at
            for check_id in UPDATE_CHECKS:
                if check_id in self._due:
                    self._due[check_id] = min(self._due[check_id], now)

    def updates_view(self) -> dict[str, Any]:
        """What `health` says about pending updates: the shared scan, or why there is none."""
        scan = self.pending.latest
        view: dict[str, Any] = {
            "pending": None,
            "security": None,
            "state": "checked",
            "checked_at": None,
            "next_check_at": None,
            "changed_at": None,
            "problem": None,
        }
        if scan is not None:
            view["checked_at"] = scan.checked_at
            if scan.problem is not None:
                return {**view, "state": "unavailable", "problem": scan.problem}
            return {**view, "pending": len(scan.upgrades), "security": len(scan.security)}
        checks = [self.checks[i] for i in UPDATE_CHECKS if i in self.checks]
        if not any(c.enabled for c in checks):
            return {**view, "state": "disabled"}
        runs = [t for t in (self.next_run(c.id) for c in checks if c.enabled) if t is not None]
        view["next_check_at"] = min(runs, default=None)
        if self.pending.failure is not None:
            return {**view, "state": "unavailable", "problem": self.pending.failure}
        changed_at = self.pending.invalid_since
        if changed_at is not None:
            return {**view, "state": "changed", "changed_at": changed_at}
        return {**view, "state": "not_checked"}

    async def _scheduled(self, check: Check) -> None:
        try:
            await self.run_check(check)
        except Exception:  # isolation boundary: grading/alerting bugs never stop the loop
            log.exception("handling %s failed", check.id)

    async def run_many(
        self,
        checks: Iterable[Check],
        on_result: Callable[[CheckResult], Awaitable[None]] | None = None,
    ) -> list[CheckResult]:
        """Run `checks` now (at most max_parallel at once); results in the given order.

        `on_result` is awaited with each result as its check finishes (the
        doctor's progress).
        """
        chosen = list(checks)
        out: dict[str, CheckResult] = {}

        async def one(check: Check) -> None:
            out[check.id] = result = await self.run_check(check)
            if on_result is not None:
                await on_result(result)

        async with anyio.create_task_group() as tg:
            for check in chosen:
                tg.start_soon(one, check)
        return [out[c.id] for c in chosen]

    async def run_check(self, check: Check) -> CheckResult:
        """Run one check now, grade it and update alerts; returns its result."""
        asked = time.monotonic()
        while (running := self._running.get(check.id)) is not None:
            began, ended = running
            with anyio.fail_after(self._timeout(check) * 2 + 5):
                await ended.wait()
            if began >= asked:
                # A run that began after this request sees what the caller wants seen.
                return self.results[check.id]
            # One that began before it may predate the condition asked about: run again.
        done = anyio.Event()
        self._running[check.id] = (time.monotonic(), done)
        try:
            await self._observe(self.before_check, check)
            findings, duration = await self._collect(check)
            result = await self._grade(check, findings, duration)
            self.results[check.id] = result
            self.runs += 1
            self.health.invalidate()
        finally:
            del self._running[check.id]
            done.set()
        await self._observe(self.after_check, result)
        return result

    def _timeout(self, check: Check) -> float:
        return check.timeout or self.config.doctor.timeout_seconds

    async def _collect(self, check: Check) -> tuple[list[Finding], float]:
        if not check.enabled:
            return [Finding("disabled in the configuration", status=Status.SKIP)], 0.0
        timeout = self._timeout(check)
        async with self._sem:
            started = time.perf_counter()
            try:
                with anyio.fail_after(timeout):
                    findings = await anyio.to_thread.run_sync(
                        check.collect, abandon_on_cancel=True, limiter=self._threads
                    )
            except TimeoutError:
                log.warning("check %s timed out after %gs", check.id, timeout)
                findings = [Finding(f"timed out after {timeout:g}s", status=Status.ERROR)]
            except Exception as exc:  # isolation boundary: a check's bug is its ERROR
                if self._state == "stopped":
                    # Its commands were ended by the shutdown: not a fault to report.
                    log.info("check %s interrupted by the shutdown: %s", check.id, exc)
                else:
                    log.exception("check %s failed", check.id)
                findings = [
                    Finding(f"check failed: {type(exc).__name__}: {exc}", status=Status.ERROR)
                ]
            duration = (time.perf_counter() - started) * 1000
        return findings, duration

    # -- grading and alerts ----------------------------------------------

    async def _grade(self, check: Check, findings: list[Finding], duration: float) -> CheckResult:
        graded: list[tuple[Finding, Status]] = []
        for finding in findings:
            status = finding.status
            if status is None:
                status = self._level(check, finding)
            graded.append((finding, status))
        overall = worst([s for _, s in graded])
        result = CheckResult(
            check_id=check.id,
            name=check.name,
            category=check.category,
            status=overall,
            message=_message(graded, overall),
            details=_details(graded),
            fix_id=check.fix_id if overall in (Status.WARN, Status.FAIL) else None,
            duration_ms=duration,
            finished_at=self.clock(),
        )
        await self._publish(check, graded, overall)
        return result

    def _level(self, check: Check, finding: Finding) -> Status:
        if finding.value is None or check.thresholds is None:
            return Status.PASS
        key = (check.id, fingerprint(check.id, finding.labels))
        tracker = self._trackers.get(key)
        if tracker is None:
            tracker = self._trackers[key] = LevelTracker(check.thresholds)
        return Status(tracker.update(finding.value))

    async def _publish(
        self, check: Check, graded: list[tuple[Finding, Status]], overall: Status
    ) -> None:
        try:
            await self._publish_findings(check, graded, overall)
            await self._publish_errors(check, overall, graded)
        except CortexError as exc:  # e.g. the active-alert cap: logged, the check goes on
            log.warning("alerts for %s not stored: %s", check.id, exc.message)

    async def _publish_findings(
        self, check: Check, graded: list[tuple[Finding, Status]], overall: Status
    ) -> None:
        previous = self._subjects.get(check.id, {})
        current: dict[str, dict[str, str]] = {}
        for finding, status in graded:
            labels = {"check": check.id, **finding.labels}
            key = fingerprint(check.id, labels)
            current[key] = labels
            if status in (Status.WARN, Status.FAIL):
                severity = finding.severity
                if severity is None:  # not `or`: INFO is 0 and would be lost
                    severity = Severity.WARNING if status is Status.WARN else check.fail_severity
                await self.alerts.notice(
                    source=check.id,
                    labels=labels,
                    severity=severity,
                    category=check.alert_category,
                    title=_title(check, finding),
                    description=finding.message,
                    annotations={
                        "status": status.value,
                        "value": finding.value,
                        "fix_id": check.fix_id,
                    },
                    # A full disk must not silence the alert about the full disk.
                    hold=True,
                )
            elif status in (Status.PASS, Status.SKIP):
                await self.alerts.condition_cleared(
                    source=check.id,
                    labels=labels,
                    description=finding.message,
                    annotations={"status": status.value, "value": finding.value},
                )
        if overall is not Status.ERROR:
            # A subject that vanished (a filesystem unmounted) no longer holds.
            for key, labels in previous.items():
                if key not in current:
                    await self.alerts.condition_cleared(
                        source=check.id,
                        labels=labels,
                        description=f"{check.name}: no longer reported",
                    )
                    self._trackers.pop((check.id, fingerprint(check.id, _own(labels))), None)
            self._subjects[check.id] = current
        else:
            self._subjects[check.id] = {**previous, **current}

    async def _publish_errors(
        self, check: Check, overall: Status, graded: list[tuple[Finding, Status]]
    ) -> None:
        labels = {"check": check.id}
        if overall is not Status.ERROR:
            if self._errors.pop(check.id, 0) >= ERRORS_BEFORE_ALERT:
                await self.alerts.condition_cleared(
                    source="monitor",
                    labels=labels,
                    description=f"check {check.id} runs again: {_message(graded, overall)}",
                )
            return
        count = self._errors[check.id] = self._errors.get(check.id, 0) + 1
        if count >= ERRORS_BEFORE_ALERT:
            await self.alerts.notice(
                source="monitor",
                labels=labels,
                severity=Severity.WARNING,
                category="daemon_status",
                title=f"check {check.id} keeps failing",
                description=_message(graded, overall),
                annotations={"consecutive_errors": count},
                hold=True,
            )


def _same_build(old: Check, new: Check) -> bool:
    return (
        type(old) is type(new) and old.built_from is not None and old.built_from == new.built_from
    )


def _own(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "check"}


def _title(check: Check, finding: Finding) -> str:
    subject = " ".join(finding.labels.values())
    return f"{check.name} {subject}".strip()


def _message(graded: list[tuple[Finding, Status]], overall: Status) -> str:
    if len(graded) == 1:
        return graded[0][0].message
    notable = [f.message for f, s in graded if s is overall]
    if overall in (Status.PASS, Status.SKIP):
        return f"{len(graded)} items ok" if overall is Status.PASS else notable[0]
    return "; ".join(notable)


def _details(graded: list[tuple[Finding, Status]]) -> dict[str, Any]:
    if len(graded) == 1 and not graded[0][0].labels:
        return dict(graded[0][0].details)
    return {
        "items": [
            {
                "status": status.value,
                "message": finding.message,
                "labels": dict(finding.labels),
                **dict(finding.details),
            }
            for finding, status in graded
        ]
    }
