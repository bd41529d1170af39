"""The notifier: keeps every action told the current state of every alert it routes.

Per alert and per action the notifier remembers what that action was last
told (`Delivery`, in `notify.db`). On every alert change, and every
`notify.evaluation_interval_seconds` for whatever waits (a cooldown, a
silence, the rate limit, a repeat), it decides what each action should be
told now (`cortexd.notify.policy`) and queues those messages in the durable
outbox, in the same transaction as the new delivery state, before the alert
change is answered. `cortexd.notify.delivery` sends them, in order per alert
and action, with retries and dead letters.

After a crash, entries left `processing` are attempted again (delivery is at
least once; each request carries `X-Cortex-Notification-Id` so a receiver
can drop a repeat), and the first evaluation at start compares every alert
with its delivery state, so a change committed just before the crash is
told. Firing alerts sent to an Alertmanager are re-sent every
`notify.alertmanager_resend_seconds` so they do not expire there.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Alert
from cortexd.config.schema import Config, NotifyConfig
from cortexd.notify.actions import ActionTypes
from cortexd.notify.delivery import Dispatcher, ExplanationSource
from cortexd.notify.keepalive import Keepalive
from cortexd.notify.model import ACTION_TYPES, Action, Answer
from cortexd.notify.planner import Planner
from cortexd.notify.policy import (
    Plan,
)
from cortexd.notify.rules import Rules, load_rules
from cortexd.notify.store import Message, NotifyStore
from cortexd.notify.summary import (
    SUMMARY_FINGERPRINT,
    daily_due,
    daily_text,
    summary_actions,
    summary_alert,
)
from cortexd.notify.throttle import RateLimit
from cortexd.protocol import ConfigError, NotFound
from cortexd.store import Database, StorageUnavailable, StoreFailed

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 5.0
# Every this many evaluation rounds, every tracked alert is compared.
FULL_EVERY = 6
STOP_GRACE = 2.0
PRUNE_INTERVAL = 3600.0
DAY = 86400.0
SUMMARY_KEY = "daily_summary_date"
# Delivery state of alerts no longer tracked is forgotten after this long.
FORGET_AFTER = 3600.0


def _external_url(config: NotifyConfig) -> str:
    """`notify.external_url`, checked: empty, or an http(s) URL. Raises ConfigError."""
    url = config.external_url
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        raise ConfigError([f"notify.external_url: must be an http:// or https:// URL: {url!r}"])
    return url


class Notifier:
    """Owns `notify.db`: delivery state, the outbox, the dead letters and their loops."""

    name = "notify"

    def __init__(
        self,
        db: Database,
        config: Config,
        alerts: AlertManager,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        action_types: ActionTypes | None = None,
    ) -> None:
        self.store = NotifyStore(db)
        self.action_types = ActionTypes() if action_types is None else action_types
        self.rules_errors: list[str] = []
        self.config: NotifyConfig = config.notify
        self.alerts = alerts
        self.clock = clock
        self.instance = self.config.instance or alerts.host or socket.gethostname()
        self.rules = Rules()
        self.rate = RateLimit(self.config.rate_limit_per_minute, clock)
        self.dispatcher = Dispatcher(
            self.store,
            self.config,
            lambda name: self.rules.actions.get(name),
            self.action_types,
            clock=clock,
            rand=rand,
        )
        self.planner = Planner(alerts, self.rate)
        self._lock = anyio.Lock()
        self._evaluate_all = True
        self._wake = anyio.Event()
        self.keepalive = Keepalive(lambda name: self.rules.actions.get(name), self.send)
        self._tg: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self._state = "starting"

    def include_explanations(self, source: ExplanationSource) -> None:
        """Where actions with `include_explanation` find an alert's explanation."""
        self.dispatcher.explanations = source

    # -- counters kept by the delivery loop ---------------------------------

    @property
    def sent(self) -> Counter[str]:
        return self.dispatcher.sent

    @property
    def failed(self) -> Counter[str]:
        return self.dispatcher.failed

    @property
    def dead_lettered(self) -> Counter[str]:
        return self.dispatcher.dead_lettered

    @property
    def suppressed(self) -> Counter[str]:
        return self.planner.suppressed

    @property
    def pending(self) -> int:
        return self.dispatcher.pending

    # -- lifecycle -------------------------------------------------------

    @property
    def db(self) -> Database:
        """`notify.db`, for backup and restore (which copy and swap it through its owner)."""
        return self.store.db

    async def start(self, tg: TaskGroup) -> None:
        """Load the rules (ConfigError if invalid), open the outbox, catch up, start delivery."""
        _external_url(self.config)
        self.rules = await anyio.to_thread.run_sync(
            load_rules, self.config.rules_path, self.action_types
        )
        try:
            await self.store.open()
        except StoreFailed:
            # Without the outbox nothing can be queued: notifications are off,
            # the daemon serves.
            self._state = "failed"
            return
        requeued = await self.store.requeue_interrupted()
        if requeued:
            log.info("%d notifications interrupted by a restart will be sent again", requeued)
        self.dispatcher.pending = await self.store.count_open()
        self.planner.load(await self.store.load_deliveries())
        await self.keepalive.load(self.store, self.planner.all())
        self._state = "running"
        # What changed while nothing listened (a crash between an alert's commit
        # and its notification's) is told now, before anything else.
        try:
            await self.evaluate(everything=True)
        except StoreFailed as exc:  # the alerts database failed to open: nothing to catch up
            log.warning("notifications not caught up: %s", exc.message)
        await tg.start(self._run)
        self.alerts.listeners.append(self.on_alert)
        self.action_types.listeners.append(self._types_changed)
        log.info(
            "%d rules, %d actions from %s; %d notifications pending",
            len(self.rules.rules),
            len(self.rules.actions),
            self.rules.source or "no rules file",
            self.pending,
        )

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Run the notifier's loops in a scope of its own, so `stop()` can end them first."""
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    tg.start_soon(self.dispatcher.run)
                    tg.start_soon(self._evaluate_loop)
                    tg.start_soon(self._housekeeping)
                    tg.start_soon(self.keepalive.run, tg, self._resend_interval)
                    task_status.started()
        finally:
            self._tg = None
            self._done.set()

    def _resend_interval(self) -> float:
        return self.config.alertmanager_resend_seconds

    def apply_config(self, config: Config) -> None:
        """Take new settings; the rules file is re-read in the background."""
        try:
            _external_url(config.notify)
        except ConfigError as exc:
            log.error("notify settings not applied: %s", "; ".join(exc.errors))
            return
        self.config = config.notify
        self.dispatcher.config = config.notify
        self.instance = self.config.instance or self.alerts.host
        self.rate.per_minute = self.config.rate_limit_per_minute
        self._evaluate_all = True
        if self._tg is not None:
            self._tg.start_soon(self._reload_rules)

    def _types_changed(self) -> None:
        # A plugin added or removed an action type: check the rules against the new set.
        if self._tg is not None and self.action_types.settled and self._state == "running":
            self._tg.start_soon(self._reload_rules)

    async def _reload_rules(self) -> None:
        try:
            self.rules = await anyio.to_thread.run_sync(
                load_rules, self.config.rules_path, self.action_types
            )
        except ConfigError as exc:
            self.rules_errors = list(exc.errors)
            log.error("notify rules not reloaded, keeping the old ones: %s", "; ".join(exc.errors))
            return
        self.rules_errors = []
        self._evaluate_all = True
        self._wake.set()
        log.info("%d rules reloaded", len(self.rules.rules))

    async def stop(self) -> None:
        """Stop taking events, let sends under way finish briefly, close the outbox.

        Pending entries wait for the next start.
        """
        self._state = "stopped"
        if self.on_alert in self.alerts.listeners:
            self.alerts.listeners.remove(self.on_alert)
        if self._types_changed in self.action_types.listeners:
            self.action_types.listeners.remove(self._types_changed)
        await self.dispatcher.stop()
        if self._scope is not None:
            self._scope.cancel()
            with anyio.move_on_after(STOP_GRACE):
                await self._done.wait()
        # No evaluation may be half-way through a write while the file closes.
        async with self._lock:
            await self.store.close()

    def state(self) -> dict[str, Any]:
        held = self.planner.held()
        return {
            "state": self._state,
            "rules": len(self.rules.rules),
            "actions": sorted(self.rules.actions),
            "action_types": [*ACTION_TYPES, *self.action_types.names()],
            "rules_errors": list(self.rules_errors),
            "pending": self.pending,
            "inflight": self.dispatcher.inflight,
            "sent": sum(self.sent.values()),
            "failed": sum(self.failed.values()),
            "dead_lettered": sum(self.dead_lettered.values()),
            "suppressed": dict(self.suppressed),
            "storage": self.store.db.state(),
            **self.store.db.failure_reason(),
            "held": dict(held),
        }

    # -- evaluation --------------------------------------------------------

    async def on_alert(self, event: str, alert: Alert) -> None:
        """Tell every action what changed about `alert` (fired, resolved, settled, …).

        Returns once the messages are committed to the outbox, so an accepted
        change is told even if the daemon crashes next.
        """
        if self._state != "running":
            return
        async with self._lock:
            await self._commit(self._plan([alert], self.clock(), cause=event))

    async def evaluate(self, *, everything: bool = False) -> int:
        """Tell what waited and is due now; with `everything`, compare every alert.

        Returns how many messages were queued.
        """
        async with self._lock:
            now = self.clock()
            alerts = list(
                self.alerts.tracked() if everything else self.planner.due(self.rules, now)
            )
            alerts += await self._untracked()
            plan = self._plan(alerts, now, cause=None)
            await self._commit(plan)
            return len(plan.messages)

    async def _untracked(self) -> list[Alert]:
        """Alerts told firing that the alert manager no longer tracks: they have resolved."""
        found = []
        for fp, delivery in list(self.planner.told_firing_untracked()):
            try:
                alert = await self.alerts.get(delivery.alert_id)
            except NotFound:
                log.warning("alert %s is gone; its delivery state is dropped", delivery.alert_id)
                keys = [(fp, d.action) for d in self.planner.deliveries.get(fp, {}).values()]
                await self.store.forget(keys)
                self.planner.forget(keys)
                continue
            if alert.state == "resolved":
                # Found in the database, not tracked: long settled, whatever it said then.
                found.append(dataclasses.replace(alert, flapping=False))
        return found

    def _plan(self, alerts: Iterable[Alert], now: float, cause: str | None) -> Plan:
        return self.planner.plan(
            alerts,
            now,
            cause,
            rules=self.rules,
            instance=self.instance,
            cooldown=self.config.cooldown_seconds,
        )

    def _event(
        self, kind: str, alert: dict[str, Any], *, at: float | None = None, **extra: Any
    ) -> dict[str, Any]:
        when = self.clock() if at is None else at
        return {"kind": kind, "alert": alert, "at": when, "instance": self.instance, **extra}

    async def _commit(self, plan: Plan) -> None:
        if not plan.messages and not plan.deliveries and not plan.held:
            return
        full = self.pending + len(plan.messages) > self.config.max_pending
        if full and plan.messages:
            log.error(
                "notification outbox is full (%d entries); %d messages wait for room",
                self.config.max_pending,
                len(plan.messages),
            )
            waiting = self.planner.outbox_full(plan, self.clock())
            plan = Plan(held=plan.held + waiting)  # only the records of what waits
        try:
            # Shielded: what commits must also be what this notifier remembers.
            with anyio.CancelScope(shield=True):
                ids = await self.store.commit(
                    plan.messages,
                    plan.deliveries,
                    plan.held,
                    max_attempts=self.config.max_attempts,
                    now=self.clock(),
                )
        except StorageUnavailable as exc:
            self._unstored(plan, exc.reason)
            return
        except BaseException:
            # Nothing was written: the next evaluation compares every alert again.
            self._evaluate_all = True
            raise
        self.planner.committed(plan)
        self.keepalive.queued(plan.messages)
        if ids:
            self.dispatcher.queued(len(ids))

    def _unstored(self, plan: Plan, reason: str) -> None:
        """The outbox cannot be written (a full or read-only disk): one attempt from memory.

        So an alert about that very disk still goes out. What was sent is
        remembered as told, so it is not sent again every round; after a
        restart the stored state says what is still owed.
        """
        log.error("%d notifications not queued (%s); sending once", len(plan.messages), reason)
        self.planner.committed(plan)
        self.keepalive.queued(plan.messages)
        for name, _, _, event in plan.messages:
            action = self.rules.actions.get(name)
            if action is not None and self._tg is not None:
                self._tg.start_soon(self._send_unstored, action, event)

    async def _send_unstored(self, action: Action, event: dict[str, Any]) -> None:
        """One attempt at `action` for an event the outbox could not take; never retried."""
        try:
            answer = await self.send(action, event, f"unstored-{uuid.uuid4().hex[:12]}")
        except Exception as exc:  # isolation boundary: logged like a failed attempt
            self.failed[action.name] += 1
            log.error("notification to %s (not queued) failed: %s", action.name, exc)
            return
        self.sent[action.name] += 1
        log.info("notification to %s sent without the outbox: %s", action.name, answer.status)

    async def _evaluate_loop(self) -> None:
        rounds = 0
        while True:
            with anyio.move_on_after(self.config.evaluation_interval_seconds):
                await self._wake.wait()
            self._wake = anyio.Event()
            rounds += 1
            # Now and then every alert is compared, not only those waiting: a safety
            # net for a change no event announced (a write that failed half-way).
            everything = self._evaluate_all or rounds % FULL_EVERY == 0
            self._evaluate_all = False
            try:
                await self.evaluate(everything=everything)
            except Exception:  # isolation boundary: the next round tries again
                log.exception("notify evaluation failed")

    async def send(self, action: Action, event: dict[str, Any], entry_id: int | str) -> Answer:
        """One attempt at `action` (see `Dispatcher.send`). Raises DeliveryFailed."""
        return await self.dispatcher.send(action, event, entry_id)

    # -- housekeeping: daily summary, retention ----------------------------

    async def _housekeeping(self) -> None:
        last_prune = -PRUNE_INTERVAL
        while True:
            await anyio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                if self.config.daily_summary:
                    await self._daily_summary()
                if time.monotonic() - last_prune >= PRUNE_INTERVAL:
                    last_prune = time.monotonic()
                    await self.prune()
            except Exception:  # isolation boundary: next round tries again
                log.exception("notify housekeeping failed")

    async def _summary(self, title: str, text: str) -> None:
        now = self.clock()
        event = self._event("summary", summary_alert(title, text, now, self.instance), text=text)
        fp = SUMMARY_FINGERPRINT
        messages: list[Message] = [
            (a.name, "summary", fp, event) for a in summary_actions(self.rules.actions)
        ]
        if not messages:
            return
        async with self._lock:
            if self.pending + len(messages) > self.config.max_pending:
                log.error("notification outbox is full: the summary is not sent")
                return
            ids = await self.store.commit(
                messages, [], [], max_attempts=self.config.max_attempts, now=now
            )
        if ids:
            self.dispatcher.queued(len(ids))

    async def _daily_summary(self) -> None:
        now = self.clock()
        today = daily_due(now, self.config.daily_summary_time, await self.store.get_kv(SUMMARY_KEY))
        if today is None:
            return
        await self.store.put_kv(SUMMARY_KEY, today)
        counts = await self.store.counts_since(now - DAY)
        text = daily_text(counts, int(self.alerts.state().get("active", 0)))
        await self._summary(f"daily summary for {self.instance}", text)

    async def prune(self) -> int:
        """Apply history and dead-letter retention; forget settled state of old alerts."""
        now = self.clock()
        async with self._lock:
            stale = self.planner.stale(now, FORGET_AFTER)
            if stale:
                await self.store.forget(stale)
                self.planner.forget(stale)
        history = now - self.config.history_days * DAY
        dead = now - self.config.deadletter_retention_days * DAY
        return await self.store.prune(history, dead)

    # -- operator actions ------------------------------------------------

    def action(self, name: str) -> Action:
        """Raises NotFound."""
        action = self.rules.actions.get(name)
        if action is None:
            known = ", ".join(sorted(self.rules.actions)) or "none configured"
            raise NotFound(f"no notify action {name!r} (known: {known})", action=name)
        return action

    def test_event(self) -> dict[str, Any]:
        now = self.clock()
        alert = {
            "id": "test",
            "fingerprint": "test",
            "source": "notify_test",
            "severity": "INFO",
            "category": "daemon_status",
            "title": "test notification from cortexd",
            "description": f"A test sent by `cortexctl notify test` from {self.instance}.",
            "labels": {},
            "annotations": {},
            "first_seen": now,
            "host": self.instance,
        }
        return self._event("test", alert)

    async def retry_dead(self, rows: list[Any]) -> tuple[list[int], list[int]]:
        """Put dead letters back into the outbox; returns (new ids, superseded letters)."""
        ids, superseded = await self.store.retry_dead(rows, self.config.max_attempts, self.clock())
        self.dispatcher.queued(len(ids))
        return ids, superseded
