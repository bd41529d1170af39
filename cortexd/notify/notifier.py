"""The notifier: alert events → durable outbox → concurrent delivery.

The alert manager calls `on_alert` for every fire, re-open, escalation and
resolution. A notification that passes silences, cooldown and the rate
limit is committed to the outbox before `on_alert` returns (before any
attempt); the delivery loop claims due entries, sends each in a worker thread
with a per-attempt timeout, at most `notify.max_concurrent` at once, and
retries with exponential backoff and jitter until `notify.max_attempts`,
after which the entry moves to the dead-letter table. A dead or hanging
endpoint holds at most half the slots; the socket never waits on delivery.

After a crash, entries left `processing` are attempted again, so delivery is
at least once, and firing alerts that no entry accounts for (the crash came
between the alert's commit and its entry's) are queued at start. Every
request carries the entry id (`X-Cortex-Notification-Id`) so a receiver can
drop a repeat. Firing alerts sent to an Alertmanager are
re-sent every `notify.alertmanager_resend_seconds` so they do not expire.
Action types added at run time (notifier plugins, `cortexd.notify.actions`)
go through the same outbox; only the attempt itself is theirs.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Alert, ListFilter
from cortexd.config.schema import Config, NotifyConfig
from cortexd.notify import store
from cortexd.notify.actions import ActionTypes
from cortexd.notify.payloads import ALERTMANAGER_LIFETIME_FACTOR, build
from cortexd.notify.rules import ACTION_TYPES, Action, Rules, load_rules
from cortexd.notify.send import Answer, DeliveryFailed, deliver
from cortexd.notify.throttle import Throttle
from cortexd.protocol import ConfigError, NotFound
from cortexd.store import Database

log = logging.getLogger(__name__)

MAX_IDLE = 5.0
HOUSEKEEPING_INTERVAL = 5.0
PRUNE_INTERVAL = 3600.0
# A hung thread gets this much past its own socket timeout before we stop waiting.
THREAD_GRACE = 2.0
SETTLE_POLL = 0.05
DAY = 86400.0
SUMMARY_KEY = "daily_summary_date"


def backoff(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Delay before retry `attempt` (1-based): base·2^(n-1), capped, with jitter in [½, 1]."""
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay * (0.5 + 0.5 * rand())


class Notifier:
    """Owns `notify.db`: the outbox, the dead letters and the delivery loop."""

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
        self.db = db
        self.action_types = ActionTypes() if action_types is None else action_types
        self.rules_errors: list[str] = []
        self.config: NotifyConfig = config.notify
        self.alerts = alerts
        self.clock = clock
        self.rand = rand
        self.instance = self.config.instance or alerts.host or socket.gethostname()
        self.rules = Rules()
        self.throttle = Throttle(
            self.config.cooldown_seconds, self.config.rate_limit_per_minute, clock
        )
        self._threads = anyio.CapacityLimiter(self.config.max_concurrent)
        self._wake = anyio.Event()
        self._inflight: dict[int, str] = {}  # entry id -> action name
        self._am_firing: dict[tuple[str, str], dict[str, Any]] = {}
        self._tg: TaskGroup | None = None
        self._state = "starting"
        self.pending = 0
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.dead_lettered: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        """Load the rules (ConfigError if invalid), open the outbox, start delivery."""
        self.rules = await anyio.to_thread.run_sync(
            load_rules, self.config.rules_path, self.action_types
        )
        await self.db.open()
        requeued = await self.db.run(store.requeue_interrupted)
        if requeued:
            log.info("%d notifications interrupted by a restart will be sent again", requeued)
        self.pending = await self.db.read(store.count_open)
        await self._catch_up()
        self._tg = tg
        tg.start_soon(self._deliver_loop)
        tg.start_soon(self._housekeeping)
        tg.start_soon(self._keepalive)
        self.alerts.listeners.append(self.on_alert)
        self.action_types.listeners.append(self._types_changed)
        self._state = "running"
        log.info(
            "%d rules, %d actions from %s; %d notifications pending",
            len(self.rules.rules),
            len(self.rules.actions),
            self.rules.source or "no rules file",
            self.pending,
        )

    def apply_config(self, config: Config) -> None:
        """Take new settings; the rules file is re-read in the background."""
        self.config = config.notify
        self.instance = self.config.instance or self.alerts.host
        self.throttle.cooldown = self.config.cooldown_seconds
        self.throttle.per_minute = self.config.rate_limit_per_minute
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
        log.info("%d rules reloaded", len(self.rules.rules))

    async def stop(self) -> None:
        """Stop taking events and close the outbox; pending entries wait for the next start."""
        self._state = "stopped"
        if self.on_alert in self.alerts.listeners:
            self.alerts.listeners.remove(self.on_alert)
        if self._types_changed in self.action_types.listeners:
            self.action_types.listeners.remove(self._types_changed)
        await self.db.close()

    def state(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "rules": len(self.rules.rules),
            "actions": sorted(self.rules.actions),
            "action_types": [*ACTION_TYPES, *self.action_types.names()],
            "rules_errors": list(self.rules_errors),
            "pending": self.pending,
            "inflight": len(self._inflight),
            "sent": sum(self.sent.values()),
            "failed": sum(self.failed.values()),
            "dead_lettered": sum(self.dead_lettered.values()),
            "suppressed": dict(self.suppressed),
        }

    # -- events ----------------------------------------------------------

    async def on_alert(self, event: str, alert: Alert) -> None:
        """Queue notifications for an alert event (fired, reopened, escalated, resolved).

        Returns once the outbox entries are committed, so an accepted
        notification survives a crash that follows.
        """
        if self._state != "running":
            return
        kind = "resolved" if event == "resolved" else "firing"
        actions = self.rules.actions_for(alert)
        if kind == "resolved":
            actions = [a for a in actions if a.send_resolved]
        if not actions:
            return
        if kind == "resolved":
            names = [a.name for a in actions]
            # Only where the last word was "firing": a re-fire held back by the
            # cooldown was never announced, so its resolution is not either.
            notified = await self.db.read(lambda c: _still_firing(c, alert.fingerprint, names))
            actions = [a for a in actions if a.name in notified]
            if not actions:
                return
        if self.alerts.is_silenced(alert):
            await self._suppress(alert, kind, "silenced")
            return
        reason = self.throttle.decide(
            alert.fingerprint, kind, alert.title, escalated=event == "escalated"
        )
        if reason is not None:
            await self._suppress(alert, kind, reason)
            return
        payload = self._event(kind, alert.to_dict(), event=event)
        await self._enqueue([(a, kind, alert.fingerprint, payload) for a in actions])

    def _event(self, kind: str, alert: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "alert": alert,
            "at": self.clock(),
            "instance": self.instance,
            **extra,
        }

    async def _suppress(self, alert: Alert, kind: str, reason: str) -> None:
        self.suppressed[reason] += 1
        log.info("notification for %s held back: %s", alert.id, reason)
        item = (alert.fingerprint, kind, reason, alert.title)
        await self.db.run(lambda c: store.record_suppressed(c, [item], self.clock()))

    async def _enqueue(self, items: list[tuple[Action, str, str, dict[str, Any]]]) -> list[int]:
        rows = [(a.name, kind, fp, event) for a, kind, fp, event in items]
        now = self.clock()
        limit = self.config.max_pending
        attempts = self.config.max_attempts

        def write(conn: Any) -> list[int]:
            if store.count_open(conn) + len(rows) > limit:
                return []
            return store.enqueue(conn, rows, attempts, now)

        ids = await self.db.run(write)
        if not ids:
            self.suppressed["outbox_full"] += len(rows)
            log.error("notification outbox is full (%d entries); %d not queued", limit, len(rows))
            await self.db.run(
                lambda c: store.record_suppressed(
                    c,
                    [(fp, kind, "outbox_full", e["alert"]["title"]) for _, kind, fp, e in rows],
                    now,
                )
            )
            return []
        self.pending += len(ids)
        for action, kind, fp, event in items:
            key = (action.name, fp)
            if action.type == "alertmanager" and kind == "firing":
                self._am_firing[key] = event
            elif kind == "resolved":
                self._am_firing.pop(key, None)
        self._wake.set()
        return ids

    # -- delivery --------------------------------------------------------

    async def _deliver_loop(self) -> None:
        assert self._tg is not None
        while True:
            try:
                free = self.config.max_concurrent - len(self._inflight)
                if free > 0:
                    rows, capped = await self.db.run(functools.partial(self._claim, limit=free))
                    for row in rows:
                        self._inflight[int(row["id"])] = str(row["action"])
                        self._tg.start_soon(self._attempt, row)
                    upcoming = await self.db.read(store.next_due)
                    wait = MAX_IDLE if upcoming is None else upcoming - self.clock()
                    if capped:
                        wait = MAX_IDLE  # a finishing attempt wakes the loop
                else:
                    wait = MAX_IDLE
            except Exception:  # isolation boundary: the loop outlives one bad round
                log.exception("notify delivery round failed")
                wait = MAX_IDLE
            with anyio.move_on_after(max(0.01, min(MAX_IDLE, wait))):
                await self._wake.wait()
            self._wake = anyio.Event()

    def _claim(self, conn: Any, *, limit: int) -> tuple[list[Any], bool]:
        busy = Counter(self._inflight.values())
        # Half the slots at most per action: a hanging endpoint leaves the rest.
        per_action = max(1, self.config.max_concurrent // 2)
        return store.claim_due(conn, self.clock(), limit, dict(busy), per_action)

    async def _attempt(self, row: Any) -> None:
        entry_id = int(row["id"])
        name = str(row["action"])
        try:
            event = store.entry_dict(row)["event"]
            action = self.rules.actions.get(name)
            try:
                if action is None:
                    raise DeliveryFailed(f"action {name!r} is no longer configured")
                answer = await self.send(action, event, entry_id)
            except DeliveryFailed as exc:
                await self._failed(row, name, str(exc), permanent=action is None)
            except Exception as exc:  # isolation boundary: one action's bug is its failure
                log.exception("notification %d to %s: unexpected failure", entry_id, name)
                await self._failed(row, name, f"{type(exc).__name__}: {exc}", permanent=False)
            else:
                self.sent[name] += 1
                self.pending -= 1
                text = f"{answer.status} {answer.text.strip()[:200]}"
                await self.db.run(lambda c: store.complete(c, entry_id, text, self.clock()))
        except Exception:  # isolation boundary: the entry stays processing until restart
            log.exception("notification %d: delivery bookkeeping failed", entry_id)
        finally:
            self._inflight.pop(entry_id, None)
            self._wake.set()

    async def _failed(self, row: Any, name: str, error: str, *, permanent: bool) -> None:
        entry_id = int(row["id"])
        attempt = int(row["attempts"]) + 1
        now = self.clock()
        retry_at = None
        if not permanent:
            delay = backoff(
                attempt, self.config.backoff_seconds, self.config.backoff_max_seconds, self.rand
            )
            retry_at = now + delay
        dead = await self.db.run(lambda c: store.fail(c, entry_id, error, now, retry_at))
        self.failed[name] += 1
        if dead:
            self.pending -= 1
            self.dead_lettered[name] += 1
            log.error(
                "notification %d to %s dead-lettered after %d attempts: %s",
                entry_id,
                name,
                attempt,
                error,
            )
        else:
            log.warning(
                "notification %d to %s failed (attempt %d): %s", entry_id, name, attempt, error
            )

    async def send(self, action: Action, event: dict[str, Any], entry_id: int | str) -> Answer:
        """One attempt at `action`, bounded by `notify.attempt_timeout_seconds`.

        Raises:
            DeliveryFailed: refused, failed or timed out. On cancellation the
                worker thread is abandoned; its own socket timeout ends it.
        """
        if action.type not in ACTION_TYPES:
            return await self._send_added(action, event, entry_id)
        event = dict(event)
        if action.type == "alertmanager":
            event["sent_at"] = self.clock()
            event["lifetime"] = (
                self.config.alertmanager_resend_seconds * ALERTMANAGER_LIFETIME_FACTOR
            )
        request = build(action, event, entry_id)
        timeout = self.config.attempt_timeout_seconds
        try:
            with anyio.fail_after(timeout + THREAD_GRACE):
                return await anyio.to_thread.run_sync(
                    deliver, request, timeout, abandon_on_cancel=True, limiter=self._threads
                )
        except TimeoutError:
            raise DeliveryFailed(f"no answer in {timeout:g}s") from None

    async def _send_added(
        self, action: Action, event: dict[str, Any], entry_id: int | str
    ) -> Answer:
        added = self.action_types.get(action.type)
        # A plugin reload unregisters its types for a moment: wait for it, not a failure.
        with anyio.move_on_after(self.config.attempt_timeout_seconds):
            while added is None and not self.action_types.settled:
                await anyio.sleep(SETTLE_POLL)
                added = self.action_types.get(action.type)
        if added is None:
            raise DeliveryFailed(
                f"action type {action.type!r} is not registered "
                "(no loaded notifier plugin provides it)"
            )
        timeout = min(self.config.attempt_timeout_seconds, added.timeout)
        try:
            with anyio.fail_after(timeout + THREAD_GRACE):
                return await anyio.to_thread.run_sync(
                    added.send,
                    action,
                    event,
                    entry_id,
                    timeout,
                    abandon_on_cancel=True,
                    limiter=self._threads,
                )
        except TimeoutError:
            raise DeliveryFailed(f"no answer in {timeout:g}s") from None

    # -- Alertmanager keep-alive -----------------------------------------

    async def _catch_up(self) -> None:
        """Rebuild the Alertmanager keep-alive set; queue what a crash left unqueued.

        An alert is committed before its notification, so a crash between the
        two leaves a firing alert that no outbox entry (and no suppression
        record) accounts for; it is queued now.
        """
        flt = ListFilter(states=("firing", "acknowledged"), include_cleared=True, limit=10_000)
        missing: list[tuple[Action, str, str, dict[str, Any]]] = []
        for alert in await self.alerts.query(flt):
            actions = self.rules.actions_for(alert)
            if not actions:
                continue
            event = self._event("firing", alert.to_dict(), event="fired")
            for action in actions:
                if action.type == "alertmanager":
                    self._am_firing[(action.name, alert.fingerprint)] = event
            if alert.state != "firing" or self.alerts.is_silenced(alert):
                continue
            check = functools.partial(
                _accounted, fp=alert.fingerprint, since=alert.first_seen, names=actions
            )
            done = await self.db.read(check)
            missing.extend(
                (a, "firing", alert.fingerprint, event) for a in actions if a not in done
            )
        if missing:
            log.warning("queueing %d notifications a restart interrupted", len(missing))
            await self._enqueue(missing)

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
        except DeliveryFailed as exc:
            log.warning("re-sending a firing alert to %s failed: %s", action.name, exc)

    # -- housekeeping: rate-limit summaries, daily summary, retention ------

    async def _housekeeping(self) -> None:
        last_prune = -PRUNE_INTERVAL
        while True:
            await anyio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                await self.summarise_excess()
                if self.config.daily_summary:
                    await self._daily_summary()
                if time.monotonic() - last_prune >= PRUNE_INTERVAL:
                    last_prune = time.monotonic()
                    await self.prune()
            except Exception:  # isolation boundary: next round tries again
                log.exception("notify housekeeping failed")

    async def summarise_excess(self) -> int:
        """Queue one summary per action for notifications the rate limit held back."""
        excess = self.throttle.roll()
        if excess is None or not self.rules.actions:
            return 0
        titles = "\n".join(f"- {t}" for t in excess.titles)
        more = excess.count - len(excess.titles)
        text = f"{excess.count} notifications were held back by the rate limit:\n{titles}"
        if more > 0:
            text += f"\n… and {more} more"
        log.warning("rate limit held back %d notifications; sending a summary", excess.count)
        await self._summary(f"{excess.count} notifications held back by the rate limit", text)
        return excess.count

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
        items = [
            (a, "summary", "summary", event)
            for a in self.rules.actions.values()
            if a.type != "alertmanager"  # not an alert: Alertmanager would keep it firing
        ]
        if items:
            await self._enqueue(items)

    async def _daily_summary(self) -> None:
        now = self.clock()
        local = datetime.fromtimestamp(now)
        hour, minute = (int(x) for x in self.config.daily_summary_time.split(":", 1))
        if (local.hour, local.minute) < (hour, minute):
            return
        today = local.date().isoformat()
        if await self.db.read(lambda c: store.get_kv(c, SUMMARY_KEY)) == today:
            return
        await self.db.run(lambda c: store.put_kv(c, SUMMARY_KEY, today))
        counts = await self.db.read(lambda c: store.counts_since(c, now - DAY))
        alerts = self.alerts.state()
        text = (
            f"Last 24 h: {counts.get('completed', 0)} notifications sent, "
            f"{counts.get('failed', 0)} dead-lettered, {counts.get('suppressed', 0)} held back; "
            f"{alerts.get('active', 0)} alerts active now."
        )
        await self._summary(f"daily summary for {self.instance}", text)

    async def prune(self) -> int:
        """Apply history and dead-letter retention."""
        now = self.clock()
        history = now - self.config.history_days * DAY
        dead = now - self.config.deadletter_retention_days * DAY
        return await self.db.run(lambda c: store.prune(c, history) + store.purge_dead(c, dead))

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

    async def retry_dead(self, rows: list[Any]) -> list[int]:
        """Put dead letters back into the outbox as fresh entries."""
        now = self.clock()
        ids = await self.db.run(lambda c: store.retry_dead(c, rows, self.config.max_attempts, now))
        self.pending += len(ids)
        self._wake.set()
        return ids


def _accounted(conn: Any, *, fp: str, since: float, names: list[Action]) -> list[Action]:
    """Which of `names` already have a firing entry (or a suppression) for `fp` since `since`."""
    held = conn.execute(
        "SELECT 1 FROM suppressed WHERE fingerprint = ? AND at >= ? LIMIT 1", (fp, since)
    ).fetchone()
    if held is not None:
        return names
    sent = _fired_to(conn, fp, [a.name for a in names], since)
    return [a for a in names if a.name in sent]


def _still_firing(conn: Any, fp: str, names: list[str]) -> set[str]:
    """Which of `names` were last sent a firing (not a resolved) notification for `fp`."""
    out = set()
    for name in names:
        row = conn.execute(
            "SELECT kind FROM outbox WHERE fingerprint = ? AND action = ?"
            " AND kind IN ('firing', 'resolved') ORDER BY id DESC LIMIT 1",
            (fp, name),
        ).fetchone()
        if row is not None and row[0] == "firing":
            out.add(name)
    return out


def _fired_to(conn: Any, fp: str, names: list[str], since: float = 0.0) -> set[str]:
    """Which of `names` were sent (or queued) a firing notification for `fp` since `since`."""
    marks = ",".join("?" * len(names))
    rows = conn.execute(
        f"SELECT DISTINCT action FROM outbox WHERE fingerprint = ? AND kind = 'firing'"
        f" AND created_at >= ? AND action IN ({marks})",
        (fp, since, *names),
    ).fetchall()
    return {str(r[0]) for r in rows}
