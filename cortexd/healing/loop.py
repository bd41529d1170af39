"""Self-healing: restart failed systemd units, with backoff, limits and a log.

Every `healing.poll_seconds` the healer asks systemd for failed units. A
unit it may heal (in `healing.allow`, or not in `healing.deny` when the
allow-list is empty) is restarted with `systemctl restart`, then, after
`healing.settle_seconds`, must report `active` within
`healing.verify_timeout_seconds`. A failed attempt waits
`healing.backoff_seconds`, doubled per attempt up to
`healing.backoff_max_seconds`, before the next. After
`healing.max_attempts` restarts within `healing.window_seconds` the unit is
given up: no more restarts and a CRITICAL alert, until it leaves the failed
state (an operator fixed it). At most `healing.max_concurrent` units heal at
once. Every attempt and every give-up goes to the healing log.

Where systemd is not PID 1 there is nothing to heal: the healer reports
itself `unavailable` rather than pretending. Time comes from an injected
clock and sleep so tests step it instead of waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Severity
from cortexd.config.schema import Config, HealingConfig
from cortexd.host.commands import CommandResult, run_command
from cortexd.host.systemd import HostLayout, failed_units, systemd_is_pid1
from cortexd.protocol import CortexError

log = logging.getLogger(__name__)

VERIFY_POLL = 1.0
SYSTEMCTL_TIMEOUT = 30.0

Exec = Callable[[Sequence[str], float], CommandResult]
Record = Callable[[dict[str, Any]], Awaitable[None]]


def unit_name(name: str) -> str:
    """`nginx` → `nginx.service`; names with a type suffix are kept."""
    return name if "." in name else f"{name}.service"


@dataclass(slots=True)
class UnitState:
    attempts: list[float] = field(default_factory=list)
    next_at: float = 0.0
    given_up: bool = False
    healing: bool = False


class Healer:
    """The self-healing loop (a daemon component)."""

    name = "healing"

    def __init__(
        self,
        config: Config,
        alerts: AlertManager,
        record: Record,
        *,
        exec_: Exec = run_command,
        layout: HostLayout | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.settings: HealingConfig = config.healing
        self.alerts = alerts
        self.record = record
        self.exec = exec_
        self.layout = layout or HostLayout()
        self.clock = clock
        self.sleep = sleep
        self.units: dict[str, UnitState] = {}
        self._limiter = anyio.CapacityLimiter(self.settings.max_concurrent)
        self.counts = {"attempts": 0, "successes": 0, "failures": 0, "given_up": 0}
        self.duration_sum_ms = 0.0
        self.duration_count = 0
        self._state = "starting"

    @property
    def available(self) -> bool:
        """Whether systemd is PID 1 here (else there is nothing to heal)."""
        return systemd_is_pid1(self.layout.systemd_runtime)

    @property
    def reason(self) -> str | None:
        if not self.available:
            return f"systemd is not PID 1 on this host ({self.layout.systemd_runtime} is missing)"
        if not self.settings.enabled:
            return "healing.enabled is false"
        return None

    # -- lifecycle -------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        # Units given up before a restart stay given up until they recover.
        for alert in self.alerts.open_alerts(source="healing"):
            unit = alert.labels.get("unit")
            if unit:
                self.units.setdefault(unit, UnitState(given_up=True))
        if not self.available:
            self._state = "unavailable"
            log.info("self-healing unavailable: %s", self.reason)
            await self._release_all(f"self-healing is unavailable: {self.reason}")
            return
        self._state = "running" if self.settings.enabled else "disabled"
        tg.start_soon(self._loop, tg)

    def apply_config(self, config: Config) -> None:
        self.settings = config.healing
        self._limiter.total_tokens = self.settings.max_concurrent
        if self._state in ("running", "disabled"):
            self._state = "running" if self.settings.enabled else "disabled"

    async def stop(self) -> None:
        if self._state != "unavailable":
            self._state = "stopped"

    def state(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "enabled": self.settings.enabled,
            "reason": self.reason,
            "healing": sorted(u for u, s in self.units.items() if s.healing),
            "given_up": sorted(u for u, s in self.units.items() if s.given_up),
            "counts": dict(self.counts),
        }

    async def _loop(self, tg: TaskGroup) -> None:
        while True:
            try:
                if self.settings.enabled:
                    await self.tick(tg)
                else:
                    await self._release_all("self-healing is turned off (healing.enabled)")
            except Exception:  # isolation boundary: one bad poll never ends healing
                log.exception("self-healing poll failed")
            await self.sleep(self.settings.poll_seconds)

    async def _release_all(self, why: str) -> None:
        """Resolve every given-up alert: nothing is healing those units any more."""
        for unit, state in list(self.units.items()):
            if state.given_up:
                await self._cleared(unit, why)
                self.units.pop(unit, None)

    # -- one poll ----------------------------------------------------------

    def wanted(self, unit: str) -> bool:
        """Whether the allow/deny lists let this unit be healed."""
        allow = {unit_name(u) for u in self.settings.allow}
        deny = {unit_name(u) for u in self.settings.deny}
        if unit in deny:
            return False
        return not allow or unit in allow

    async def failed_units(self) -> list[str]:
        """Units systemd lists as failed. Raises CommandFailed when systemctl fails."""
        units = await anyio.to_thread.run_sync(failed_units, self.exec, SYSTEMCTL_TIMEOUT)
        return [u["unit"] for u in units]

    async def tick(self, tg: TaskGroup) -> list[str]:
        """Look for failed units once; start healing the due ones in `tg`. Returns them."""
        failed = set(await self.failed_units())
        if not self.settings.enabled:
            return []  # turned off while systemctl answered: start nothing
        for unit, state in list(self.units.items()):
            if state.healing:
                continue
            if unit not in failed:
                if state.given_up:
                    log.info("%s is no longer failed; healing it again if it fails", unit)
                    await self._cleared(unit, f"{unit} is no longer failed")
                self.units.pop(unit, None)
            elif state.given_up and not self.wanted(unit):
                await self._cleared(unit, f"{unit} is no longer healed (healing.allow/deny)")
                self.units.pop(unit, None)
        now = self.clock()
        started = []
        for unit in sorted(failed):
            if not self.wanted(unit):
                continue
            state = self.units.setdefault(unit, UnitState())
            if state.healing or state.given_up or now < state.next_at:
                continue
            state.healing = True
            started.append(unit)
            tg.start_soon(self._heal_guarded, unit, state)
        return started

    async def _heal_guarded(self, unit: str, state: UnitState) -> None:
        try:
            async with self._limiter:
                await self.heal(unit, state)
        except Exception:  # isolation boundary: one unit's healing never stops the rest
            log.exception("healing %s failed", unit)
        finally:
            state.healing = False

    # -- one unit ----------------------------------------------------------

    async def heal(self, unit: str, state: UnitState) -> None:
        """One attempt at `unit`: restart, settle, verify; or give it up."""
        s = self.settings
        now = self.clock()
        state.attempts = [t for t in state.attempts if now - t < s.window_seconds]
        if len(state.attempts) >= s.max_attempts:
            await self._give_up(unit, state, now)
            return
        state.attempts.append(now)
        attempt = len(state.attempts)
        self.counts["attempts"] += 1
        log.info("self-healing: restarting %s (attempt %d of %d)", unit, attempt, s.max_attempts)
        ok, message = await self._restart_and_verify(unit)
        duration = (self.clock() - now) * 1000
        self.duration_sum_ms += duration
        self.duration_count += 1
        if ok:
            self.counts["successes"] += 1
            state.next_at = 0.0
        else:
            self.counts["failures"] += 1
            delay = min(s.backoff_seconds * 2 ** (attempt - 1), s.backoff_max_seconds)
            state.next_at = self.clock() + delay
            message += f"; next attempt in {delay:g}s at the earliest"
            log.warning("self-healing: %s: %s", unit, message)
        await self._log(
            unit, now, "restart", "success" if ok else "failed", duration, attempt, message
        )

    async def _restart_and_verify(self, unit: str) -> tuple[bool, str]:
        s = self.settings
        done = await self._systemctl(["systemctl", "restart", "--", unit], s.verify_timeout_seconds)
        if done.returncode != 0:
            return (
                False,
                f"systemctl restart failed: {done.stderr.strip()[:300] or done.returncode}",
            )
        await self.sleep(s.settle_seconds)
        deadline = self.clock() + s.verify_timeout_seconds
        last = ""
        while True:
            probe = await self._systemctl(["systemctl", "is-active", "--", unit], SYSTEMCTL_TIMEOUT)
            last = probe.stdout.strip() or probe.stderr.strip()
            if last == "active":
                return True, "active again"
            if self.clock() >= deadline:
                return False, f"not active {s.verify_timeout_seconds:g}s after settling ({last})"
            await self.sleep(VERIFY_POLL)

    async def _systemctl(self, argv: list[str], seconds: float) -> CommandResult:
        try:
            return await anyio.to_thread.run_sync(self.exec, argv, seconds)
        except Exception as exc:  # a hung or missing systemctl is this attempt's failure
            return CommandResult(-1, "", f"{type(exc).__name__}: {exc}")

    async def _give_up(self, unit: str, state: UnitState, now: float) -> None:
        state.given_up = True
        self.counts["given_up"] += 1
        s = self.settings
        message = (
            f"{unit} keeps failing: {len(state.attempts)} restarts within "
            f"{s.window_seconds:g}s did not keep it up; no more automatic restarts"
        )
        log.error("self-healing: %s", message)
        await self._log(unit, now, "give_up", "given_up", 0.0, len(state.attempts), message)
        try:
            await self.alerts.notice(
                source="healing",
                labels={"unit": unit},
                severity=Severity.CRITICAL,
                category="service",
                title=f"self-healing gave up on {unit}",
                description=message,
                annotations={"attempts": len(state.attempts)},
            )
        except CortexError as exc:
            log.warning("healing alert not stored: %s", exc.message)

    async def _cleared(self, unit: str, why: str) -> None:
        try:
            await self.alerts.condition_cleared(
                source="healing", labels={"unit": unit}, description=why
            )
        except CortexError as exc:
            log.warning("healing alert not resolved: %s", exc.message)

    async def _log(
        self,
        unit: str,
        at: float,
        action: str,
        result: str,
        duration_ms: float,
        attempt: int,
        message: str,
    ) -> None:
        entry = {
            "unit": unit,
            "at": at,
            "action": action,
            "result": result,
            "duration_ms": round(duration_ms, 3),
            "attempt": attempt,
            "message": message,
        }
        try:
            await self.record(entry)
        except Exception:  # isolation boundary: a lost log row must not stop healing
            log.exception("could not write the healing log")
