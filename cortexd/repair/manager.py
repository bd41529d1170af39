"""The repair manager: plans and applies fixes, verifies them, records every run.

An apply runs the fix's plan on a worker thread (one fix at a time: package
tools and restarts do not mix), then re-runs the checks the fix answers to
verify. Every applied fix is recorded (who, when, what, result) in
`repair.db` and raises an INFO alert. `pre_fix` hooks may veto a fix;
`post_fix` hooks see its outcome. With `repair.auto_fix_safe` the daemon
applies `safe` fixes by itself when a check answered by one fails;
`confirm` fixes never run without an operator asking with `confirm: true`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Severity
from cortexd.config.schema import Config
from cortexd.monitor.check import CheckResult, Status
from cortexd.plugins.hooks import HookRegistry
from cortexd.protocol import (
    Busy,
    CortexError,
    ErrorCode,
    InvalidParams,
    NotFound,
    PermissionDenied,
    Timeout,
)
from cortexd.repair import store
from cortexd.repair.model import Fix, Outcome, Plan
from cortexd.repair.runner import FixRunner
from cortexd.store import Database, StoreFailed

if TYPE_CHECKING:
    from cortexd.monitor.scheduler import Monitor

log = logging.getLogger(__name__)

LOCK_WAIT = 5.0
PLAN_TIMEOUT = 120.0
APPLY_SLACK = 60.0
# An automatic fix of the same thing is not retried sooner than this: a fix
# that does not help must not run at every check interval.
AUTO_FIX_SPACING = 3600.0


class FixVetoed(CortexError):
    """A `pre_fix` hook refused the fix."""

    code = ErrorCode.CANCELLED

    def __init__(self, fix_id: str, reason: str) -> None:
        super().__init__(f"fix {fix_id} vetoed by {reason}", fix_id=fix_id, reason=reason)


class RepairManager:
    """Owns the fix registry and the repair database (a daemon component)."""

    name = "repair"

    def __init__(
        self,
        config: Config,
        fixes: list[Fix],
        db: Database,
        alerts: AlertManager,
        runner: FixRunner,
        *,
        hooks: HookRegistry | None = None,
        monitor: Monitor | None = None,
        clock: Callable[[], float] = time.time,
        rebuild: Callable[[Config], list[Fix]] | None = None,
    ) -> None:
        self.config = config
        self.fixes = {f.id: f for f in fixes}
        self.db = db
        self.alerts = alerts
        self.runner = runner
        self.hooks = hooks or HookRegistry()
        self.monitor = monitor
        self.clock = clock
        self._rebuild = rebuild
        self._lock = anyio.Lock()
        self._auto_last: dict[tuple[str, str | None], float] = {}
        self._tg: TaskGroup | None = None
        self._state = "starting"
        self.applied: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        if monitor is not None:
            monitor.after_check.append(self._after_check)

    # -- lifecycle -------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        try:
            await self.db.open()
        except StoreFailed:
            # No history to record into: fixes are refused (see `apply`), the daemon serves.
            self._state = "failed"
            return
        self._state = "running"

    def apply_config(self, config: Config) -> None:
        """Take new settings; fixes are rebuilt so paths and sizes change live."""
        self.config = config
        self.runner.timeout = config.repair.command_timeout
        if self._rebuild is not None:
            self.fixes = {f.id: f for f in self._rebuild(config)}

    async def stop(self) -> None:
        self._state = "stopped"
        self.runner.kill_all()
        await self.db.close()

    def state(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "fixes": len(self.fixes),
            "auto_fix_safe": self.config.repair.auto_fix_safe,
            "transient_units": self.runner.transient,
            "running": self._lock.locked(),
            "applied": dict(self.applied),
            "failed": dict(self.failed),
            "storage": self.db.state(),
            **self.db.failure_reason(),
        }

    # -- lookup and planning -----------------------------------------------

    def fix_for(self, fix_id: str | None, check_id: str | None) -> Fix:
        """The fix named, or the one answering `check_id`'s latest result.

        Raises:
            InvalidParams: neither given, or both.
            NotFound: no such fix, or the check has no fix / no failing result.
        """
        if (fix_id is None) == (check_id is None):
            raise InvalidParams("fix_id", "give a fix_id or a check_id")
        if fix_id is not None:
            fix = self.fixes.get(fix_id)
            if fix is None:
                raise NotFound(f"no fix {fix_id!r} (known: {', '.join(self.fixes)})", fix_id=fix_id)
            return fix
        for fix in self.fixes.values():
            if check_id in fix.checks and self._check_fix(check_id) == fix.id:
                return fix
        raise NotFound(f"no fix answers check {check_id!r}", check_id=check_id)

    def _check_fix(self, check_id: str | None) -> str | None:
        if self.monitor is None or check_id is None:
            return None
        check = self.monitor.checks.get(check_id)
        return check.fix_id if check is not None else None

    async def plan(self, fix: Fix, target: str | None) -> Plan:
        """The fix's dry run: what it would do now (runs on a worker thread).

        Raises:
            Timeout: looking took longer than PLAN_TIMEOUT (the thread's own
                command timeouts end it).
        """
        try:
            with anyio.fail_after(PLAN_TIMEOUT):
                return await anyio.to_thread.run_sync(fix.plan, target, abandon_on_cancel=True)
        except TimeoutError:
            raise Timeout(PLAN_TIMEOUT) from None

    # -- applying ------------------------------------------------------------

    async def apply(
        self, fix: Fix, target: str | None, *, confirm: bool, requested_by: str
    ) -> dict[str, Any]:
        """Plan, apply and verify `fix`; returns the plan and the outcome.

        Raises:
            PermissionDenied: a `confirm` fix without `confirm`.
            FixVetoed: a pre_fix hook refused.
            Busy: another fix is running and did not finish within a few seconds.
            Unavailable: the fix needs systemd (or its bus) and it is not there.
            StoreFailed: repair.db could not be opened, so the fix could not be recorded.
        """
        if self.db.failure is not None:
            # Every applied fix is recorded; without the history, none is applied.
            raise StoreFailed(self.db.name, self.db.failure)
        if fix.safety == "confirm" and not confirm:
            raise PermissionDenied(
                f"fix {fix.id} changes the system in ways to confirm: pass confirm: true",
                fix_id=fix.id,
            )
        try:
            with anyio.fail_after(LOCK_WAIT):
                await self._lock.acquire()
        except TimeoutError:
            raise Busy("another fix is running; try again when it finishes") from None
        try:
            return await self._apply_locked(fix, target, requested_by)
        finally:
            self._lock.release()

    async def _apply_locked(self, fix: Fix, target: str | None, who: str) -> dict[str, Any]:
        plan = await self.plan(fix, target)
        payload = {"fix_id": fix.id, "target": target, "plan": plan.to_dict(), "by": who}
        reason = await self.hooks.veto("pre_fix", payload)
        if reason is not None:
            log.warning("fix %s vetoed: %s", fix.id, reason)
            raise FixVetoed(fix.id, reason)
        started = self.clock()
        outcome = Outcome(fix.id, target, ok=True)
        if plan.steps:
            log.info("applying fix %s for %s: %s", fix.id, who, plan.summary)
            # Each step's command is bounded by the runner's timeout; this is the backstop.
            budget = self.runner.timeout * len(plan.steps) + APPLY_SLACK
            try:
                with anyio.fail_after(budget):
                    outcome.results = await anyio.to_thread.run_sync(
                        fix.apply, plan, abandon_on_cancel=True
                    )
            except TimeoutError:
                raise Timeout(budget) from None
            outcome.ok = all(r.ok for r in outcome.results)
        await self._verify(fix, outcome)
        outcome.message = _message(plan, outcome)
        finished = self.clock()
        counter = self.applied if outcome.ok else self.failed
        counter[fix.id] = counter.get(fix.id, 0) + 1
        if plan.steps:
            await self._record(fix, outcome, who, started, finished)
        await self.hooks.run("post_fix", {**payload, "outcome": outcome.to_dict()})
        return {"plan": plan.to_dict(), "outcome": outcome.to_dict(), "requested_by": who}

    async def _verify(self, fix: Fix, outcome: Outcome) -> None:
        if self.monitor is None:
            return
        checks = [self.monitor.checks[c] for c in fix.checks if c in self.monitor.checks]
        if not checks:
            return
        results = await self.monitor.run_many(checks)
        bad = [r for r in results if r.status in (Status.FAIL, Status.WARN, Status.ERROR)]
        outcome.verified = not bad
        outcome.check_status = (bad[0] if bad else results[0]).status.value

    async def _record(
        self, fix: Fix, outcome: Outcome, who: str, started: float, finished: float
    ) -> None:
        row = {
            "fix_id": fix.id,
            "target": outcome.target,
            "requested_by": who,
            "started_at": started,
            "finished_at": finished,
            "ok": outcome.ok,
            "verified": outcome.verified,
            "message": outcome.message,
            "steps": [r.to_dict() for r in outcome.results],
        }
        try:
            await self.db.run(lambda c: store.add_fix_run(c, row))
        except Exception:  # isolation boundary: the fix ran; losing its record is logged
            log.exception("could not record fix %s", fix.id)
        try:
            # One alert per fix: a fix applied again refreshes it (its count grows).
            # It reports something that happened, so it ends on its own (alerts.event_ttl_seconds).
            await self.alerts.notice(
                source="repair",
                labels={"fix": fix.id},
                severity=Severity.INFO,
                category="daemon_status",
                title=f"fix {fix.id} applied" + ("" if outcome.ok else " with errors"),
                description=f"{outcome.message} (requested by {who})",
                annotations={"ok": outcome.ok, "verified": outcome.verified},
                event=True,
            )
        except CortexError as exc:
            log.warning("fix %s: alert not stored: %s", fix.id, exc.message)

    async def record_healing(self, entry: dict[str, Any]) -> None:
        """Add one entry to the healing log (self-healing shares this database)."""
        await self.db.run(lambda c: store.add_healing(c, entry))

    async def healing_log(self, unit: str | None, limit: int) -> list[dict[str, Any]]:
        """Healing log entries, newest first."""
        return await self.db.read(lambda c: store.healing_log(c, unit, limit))

    async def history(self, limit: int) -> list[dict[str, Any]]:
        """The most recent fix runs, newest first."""
        return await self.db.read(lambda c: store.fix_runs(c, limit))

    # -- automatic safe fixes ----------------------------------------------

    async def _after_check(self, result: CheckResult) -> None:
        if not self.config.repair.auto_fix_safe or result.fix_id is None:
            return
        if result.status not in (Status.FAIL, Status.WARN):
            return
        fix = self.fixes.get(result.fix_id)
        if fix is None or fix.safety != "safe" or self._tg is None or self._lock.locked():
            return
        key = (fix.id, result.check_id)
        now = self.clock()
        if now - self._auto_last.get(key, -AUTO_FIX_SPACING) < AUTO_FIX_SPACING:
            return
        self._auto_last[key] = now
        self._tg.start_soon(self._auto_apply, fix, result.check_id)

    async def _auto_apply(self, fix: Fix, check_id: str) -> None:
        try:
            done = await self.apply(
                fix, None, confirm=False, requested_by=f"auto_fix_safe ({check_id})"
            )
            log.info("automatic fix %s: %s", fix.id, done["outcome"]["message"])
        except CortexError as exc:
            log.warning("automatic fix %s not applied: %s", fix.id, exc.message)
        except Exception:  # isolation boundary: an automatic fix never stops the daemon
            log.exception("automatic fix %s failed", fix.id)


def _message(plan: Plan, outcome: Outcome) -> str:
    if not plan.steps:
        return f"nothing to do: {plan.summary}"
    failed = [r for r in outcome.results if not r.ok]
    text = plan.summary
    if failed:
        first = failed[0]
        why = first.error or first.stderr or f"exit {first.returncode}"
        text = f"{len(failed)} step(s) failed: {why}"
    if outcome.verified is True:
        text += "; verified"
    elif outcome.verified is False:
        text += f"; check still {outcome.check_status}"
    return text
