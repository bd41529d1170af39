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
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Alert
from cortexd.config.schema import Config, NotifyConfig
from cortexd.notify.actions import ActionTypes
from cortexd.notify.delivery import Dispatcher
from cortexd.notify.model import ACTION_TYPES, Action, Answer, Delivery, Kind
from cortexd.notify.payloads import labels_of
from cortexd.notify.policy import Decision, View, decide, repeat_due
from cortexd.notify.rules import Rules, load_rules
from cortexd.notify.store import Message, NotifyStore
from cortexd.notify.throttle import RateLimit
from cortexd.protocol import ConfigError, NotFound
from cortexd.store import Database, StoreFailed

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
# The payload's `event` for a message that waited: what it waited for.
_RELEASED = {
    "silenced": "silence_ended",
    "cooldown": "cooldown_ended",
    "rate_limit": "rate_limit_ended",
    "outbox_full": "outbox_freed",
}
_TOLD_FIRING = ("firing", "flapping")


def _external_url(config: NotifyConfig) -> str:
    """`notify.external_url`, checked: empty, or an http(s) URL. Raises ConfigError."""
    url = config.external_url
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        raise ConfigError([f"notify.external_url: must be an http:// or https:// URL: {url!r}"])
    return url


@dataclasses.dataclass(slots=True)
class _Decided:
    """One alert as it stands, and what each of its actions should be told about it."""

    alert: Alert
    snapshot: dict[str, Any]
    labels: dict[str, str]
    decisions: list[tuple[Action, Delivery, Decision]] = dataclasses.field(default_factory=list)

    @property
    def sends(self) -> bool:
        return any(d.send is not None and not d.record_only for _, _, d in self.decisions)

    @property
    def only_repeats(self) -> bool:
        return all(d.repeat for _, _, d in self.decisions if d.send is not None)

    def waiting_since(self, now: float) -> float:
        held = [d.held_since for _, d, _ in self.decisions if d.held_since is not None]
        return min(held, default=now)

    def hold_sends(self, reason: str) -> None:
        self.decisions = [
            (a, d, Decision(held=reason, wanted=x.send))
            if x.send is not None and not x.record_only
            else (a, d, x)
            for a, d, x in self.decisions
        ]


@dataclasses.dataclass(slots=True)
class _Plan:
    """What one evaluation decided: messages to queue, state to write, holds to record."""

    messages: list[Message] = dataclasses.field(default_factory=list)
    deliveries: list[Delivery] = dataclasses.field(default_factory=list)
    held: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)


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
        # fingerprint -> action name -> what that action was last told.
        self._deliveries: dict[str, dict[str, Delivery]] = {}
        self._lock = anyio.Lock()
        self._evaluate_all = True
        self._wake = anyio.Event()
        self._am_firing: dict[tuple[str, str], dict[str, Any]] = {}
        self._tg: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self._state = "starting"
        self.suppressed: Counter[str] = Counter()

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
    def pending(self) -> int:
        return self.dispatcher.pending

    # -- lifecycle -------------------------------------------------------

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
        for delivery in await self.store.load_deliveries():
            self._deliveries.setdefault(delivery.fingerprint, {})[delivery.action] = delivery
        await self._load_keepalive()
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
                    tg.start_soon(self._keepalive)
                    task_status.started()
        finally:
            self._tg = None
            self._done.set()

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
        log.info("notify: %d rules reloaded", len(self.rules.rules))

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
        held = Counter(d.held for ds in self._deliveries.values() for d in ds.values() if d.held)
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
            alerts = list(self._due(now) if not everything else self.alerts.tracked())
            alerts += await self._untracked(now)
            plan = self._plan(alerts, now, cause=None)
            await self._commit(plan)
            return len(plan.messages)

    def _due(self, now: float) -> Iterable[Alert]:
        """Tracked alerts with a held message or a repeat due."""
        for alert in self.alerts.tracked():
            records = self._deliveries.get(alert.fingerprint)
            if records is None:
                continue
            for delivery in records.values():
                action = self.rules.actions.get(delivery.action)
                if delivery.held or (action is not None and repeat_due(delivery, action, now)):
                    yield alert
                    break

    async def _untracked(self, now: float) -> list[Alert]:
        """Alerts told firing that the alert manager no longer tracks: they have resolved."""
        found = []
        for fp, records in list(self._deliveries.items()):
            told = [d for d in records.values() if d.kind in _TOLD_FIRING]
            if not told or self.alerts.current(fp) is not None:
                continue
            try:
                alert = await self.alerts.get(told[0].alert_id)
            except NotFound:
                log.warning("alert %s is gone; its delivery state is dropped", told[0].alert_id)
                await self.store.forget([(fp, d.action) for d in records.values()])
                del self._deliveries[fp]
                continue
            if alert.state == "resolved":
                # Found in the database, not tracked: long settled, whatever it said then.
                found.append(dataclasses.replace(alert, flapping=False))
        return found

    def _plan(self, alerts: Iterable[Alert], now: float, cause: str | None) -> _Plan:
        wanted = []
        for given in alerts:
            # The alert of this fingerprint as it is now (an event may name an older row).
            alert = self.alerts.current(given.fingerprint) or given
            decided = self._decide(alert, now)
            if decided is not None:
                wanted.append(decided)
        # Tokens of the rate limit go to changes before repeats, longest waiting first.
        wanted.sort(key=lambda w: (w.only_repeats, w.waiting_since(now)))
        plan = _Plan()
        for decided in wanted:
            if decided.sends and not self.rate.take():
                decided.hold_sends("rate_limit")
            self._apply(decided, now, cause, plan)
        return plan

    def _decide(self, alert: Alert, now: float) -> _Decided | None:
        fp = alert.fingerprint
        records = self._deliveries.setdefault(fp, {})
        matching = {a.name: a for a in self.rules.actions_for(alert)}
        names = set(matching) | {n for n, d in records.items() if d.kind in _TOLD_FIRING}
        if not names:
            return None
        silenced = alert.state != "resolved" and self.alerts.is_silenced(alert)
        snapshot = alert.to_dict(silenced=silenced)
        labels = labels_of({"alert": snapshot, "instance": self.instance})
        decided = _Decided(alert, snapshot, labels)
        for name in sorted(names):
            action = self.rules.actions.get(name)
            if action is None:
                continue  # no longer configured: nothing can be sent to it
            delivery = records.get(name) or Delivery(fp, name, alert.id)
            records[name] = delivery
            # An action whose rule no longer matches (a lower severity) is told it ended.
            state = alert.state if name in matching else "resolved"
            view = View(state, alert.severity.name, labels, alert.flapping, silenced)
            decision = decide(delivery, view, action, now, self.config.cooldown_seconds)
            decided.decisions.append((action, delivery, decision))
        return decided

    def _apply(self, decided: _Decided, now: float, cause: str | None, plan: _Plan) -> None:
        alert = decided.alert
        for action, delivery, decision in decided.decisions:
            if decision.send is not None:
                event = self._message_event(
                    decision, delivery, decided.snapshot, action, cause, now
                )
                if not decision.record_only:
                    plan.messages.append((action.name, decision.send, alert.fingerprint, event))
                plan.deliveries.append(_told(delivery, decision.send, alert, decided.labels, now))
            elif decision.held is not None:
                if delivery.held != decision.held:
                    self.suppressed[decision.held] += 1
                    log.info("notification for %s held back: %s", alert.id, decision.held)
                    wanted = decision.wanted or "firing"
                    plan.held.append((alert.fingerprint, wanted, decision.held, alert.title))
                    delivery.held_since = now
                delivery.held = decision.held
            else:
                delivery.held = delivery.held_since = None

    def _message_event(
        self,
        decision: Decision,
        delivery: Delivery,
        snapshot: dict[str, Any],
        action: Action,
        cause: str | None,
        now: float,
    ) -> dict[str, Any]:
        if decision.repeat:
            why = "repeat"
        elif delivery.held:
            why = _RELEASED.get(delivery.held, "deferred")
        else:
            why = cause or "evaluated"
        event = self._event(decision.send or "firing", snapshot, at=now, event=why)
        if action.type == "alertmanager" and delivery.labels:
            # What Alertmanager holds under the earlier label set ends in the same push.
            event["ended"] = [delivery.labels]
        return event

    def _event(
        self, kind: str, alert: dict[str, Any], *, at: float | None = None, **extra: Any
    ) -> dict[str, Any]:
        when = self.clock() if at is None else at
        return {"kind": kind, "alert": alert, "at": when, "instance": self.instance, **extra}

    async def _commit(self, plan: _Plan) -> None:
        if not plan.messages and not plan.deliveries and not plan.held:
            return
        try:
            # Shielded: what commits must also be what this notifier remembers.
            with anyio.CancelScope(shield=True):
                ids = await self.store.commit(
                    plan.messages,
                    plan.deliveries,
                    plan.held,
                    max_attempts=self.config.max_attempts,
                    max_pending=self.config.max_pending,
                    now=self.clock(),
                )
        except BaseException:
            # Nothing was written: the next evaluation compares every alert again.
            self._evaluate_all = True
            raise
        if ids is None:
            self._outbox_full(plan)
            return
        for delivery in plan.deliveries:
            self._deliveries.setdefault(delivery.fingerprint, {})[delivery.action] = delivery
        for name, kind, fp, event in plan.messages:
            action = self.rules.actions.get(name)
            if action is not None and action.type == "alertmanager":
                if kind in _TOLD_FIRING:
                    self._am_firing[(name, fp)] = {k: v for k, v in event.items() if k != "ended"}
                else:
                    self._am_firing.pop((name, fp), None)
        if ids:
            self.dispatcher.queued(len(ids))

    def _outbox_full(self, plan: _Plan) -> None:
        """Nothing of `plan` was queued: each message waits, as held, for room."""
        log.error(
            "notification outbox is full (%d entries); %d messages wait for room",
            self.config.max_pending,
            len(plan.messages),
        )
        for _, _, fp, _ in plan.messages:
            for delivery in self._deliveries.get(fp, {}).values():
                if delivery.held != "outbox_full":
                    self.suppressed["outbox_full"] += 1
                delivery.held = "outbox_full"

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

    # -- Alertmanager keep-alive -----------------------------------------

    async def _load_keepalive(self) -> None:
        """Rebuild the set of alerts an Alertmanager was last told are firing."""
        keys = [
            (d.action, d.fingerprint)
            for records in self._deliveries.values()
            for d in records.values()
            if d.kind in _TOLD_FIRING
            and (a := self.rules.actions.get(d.action)) is not None
            and a.type == "alertmanager"
        ]
        events = await self.store.last_events(keys) if keys else {}
        self._am_firing = {
            key: {k: v for k, v in event.items() if k != "ended"} for key, event in events.items()
        }

    async def _keepalive(self) -> None:
        while True:
            await anyio.sleep(self.config.alertmanager_resend_seconds)
            for (name, fp), event in list(self._am_firing.items()):
                action = self.rules.actions.get(name)
                if action is None:
                    self._am_firing.pop((name, fp), None)
                    continue
                assert self._tg is not None
                self._tg.start_soon(self._resend, action, event)

    async def _resend(self, action: Action, event: dict[str, Any]) -> None:
        try:
            await self.send(action, event, f"resend-{event['alert'].get('id', '')}")
        except Exception as exc:  # isolation boundary: the next keep-alive tries again
            log.warning("re-sending a firing alert to %s failed: %s", action.name, exc)

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
        alert = {
            "id": "",
            "fingerprint": "summary",
            "source": "cortexd",
            "severity": "INFO",
            "category": "daemon_status",
            "title": title,
            "description": text,
            "labels": {},
            "annotations": {},
            "first_seen": self.clock(),
            "host": self.instance,
        }
        event = self._event("summary", alert, text=text)
        messages: list[Message] = [
            (a.name, "summary", "summary", event)
            for a in self.rules.actions.values()
            if a.type != "alertmanager"  # not an alert: Alertmanager would keep it firing
        ]
        if not messages:
            return
        async with self._lock:
            ids = await self.store.commit(
                messages,
                [],
                [],
                max_attempts=self.config.max_attempts,
                max_pending=self.config.max_pending,
                now=self.clock(),
            )
        if ids:
            self.dispatcher.queued(len(ids))

    async def _daily_summary(self) -> None:
        now = self.clock()
        local = datetime.fromtimestamp(now)
        hour, minute = (int(x) for x in self.config.daily_summary_time.split(":", 1))
        if (local.hour, local.minute) < (hour, minute):
            return
        today = local.date().isoformat()
        if await self.store.get_kv(SUMMARY_KEY) == today:
            return
        await self.store.put_kv(SUMMARY_KEY, today)
        counts = await self.store.counts_since(now - DAY)
        alerts = self.alerts.state()
        text = (
            f"Last 24 h: {counts.get('completed', 0)} notifications sent, "
            f"{counts.get('failed', 0)} dead-lettered, {counts.get('suppressed', 0)} held back; "
            f"{alerts.get('active', 0)} alerts active now."
        )
        await self._summary(f"daily summary for {self.instance}", text)

    async def prune(self) -> int:
        """Apply history and dead-letter retention; forget settled state of old alerts."""
        now = self.clock()
        async with self._lock:
            stale = [
                (fp, d.action)
                for fp, records in self._deliveries.items()
                if self.alerts.current(fp) is None
                for d in records.values()
                if d.kind not in _TOLD_FIRING and now - d.queued_at > FORGET_AFTER
            ]
            if stale:
                await self.store.forget(stale)
                for fp, name in stale:
                    self._deliveries[fp].pop(name, None)
                    if not self._deliveries[fp]:
                        del self._deliveries[fp]
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


def _told(
    delivery: Delivery, kind: Kind, alert: Alert, labels: dict[str, str], now: float
) -> Delivery:
    """The delivery state once `kind` about `alert` is queued."""
    firing = kind in _TOLD_FIRING
    return Delivery(
        fingerprint=delivery.fingerprint,
        action=delivery.action,
        alert_id=alert.id,
        kind=kind,
        severity=alert.severity.name if firing else delivery.severity,
        labels=labels,
        queued_at=now,
        fired_at=now if firing else delivery.fired_at,
    )
