"""The alert manager: one API through which checks and programs raise alerts.

Life of an alert (SPEC §5):

- `notice()` reports that a condition holds. The first notice creates an
  alert (state firing); later ones update that same alert (`count`,
  `last_seen`, severity up or down). Writes for a persisting condition are
  coalesced: a row is rewritten on any state or severity change, otherwise
  at most once per `alerts.coalesce_seconds`; pending counts are flushed at
  shutdown. After `kill -9`, `count`/`last_seen` may lag by that much, but
  every state change (ack, resolve, clear, new alert) was committed before
  it was answered.
- `condition_cleared()` resolves the open alert of a condition.
- Re-firing: a condition that fires again within
  `alerts.reopen_window_seconds` of its resolution re-opens the same alert
  (so a flapping value yields one alert, not dozens); later, it creates a
  new alert row and the old one stays in history.
- Acknowledging keeps an alert acknowledged while its condition persists; an
  escalation (severity rises) re-opens it to firing, since a worse condition
  is news. `alerts.clear` hides acknowledged and resolved alerts from the
  active list; a hidden acknowledged alert still tracks its condition until
  it resolves, so clearing never spawns a duplicate.
- Storage: a notice with `hold=True` (the monitor's) survives a full or
  read-only disk: the alert fires and is notified from memory, is listed,
  and its row is written by the next flush that finds room. Every other
  change fails with StorageUnavailable and leaves nothing half-done. An
  alerts database that cannot be opened leaves the manager `failed`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts import store
from cortexd.alerts.matchers import Matcher, all_match, parse_matchers
from cortexd.alerts.model import Alert, Clock, ListFilter, Severity, Silence, fingerprint
from cortexd.config.schema import AlertsConfig
from cortexd.protocol import CortexError, ErrorCode, NotFound
from cortexd.store import Database, StorageUnavailable, StoreFailed

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0
FLUSH_INTERVAL = 15.0
DAY = 86400.0


class AlertCapReached(CortexError):
    """The active-alert cap is reached; the new alert was not stored."""

    code = ErrorCode.QUEUE_FULL

    def __init__(self, cap: int) -> None:
        super().__init__(f"the active alert cap ({cap}) is reached", depth=cap)


AlertListener = Callable[[str, Alert], Awaitable[None]]
"""Called with `fired`, `reopened`, `escalated` or `resolved` once that change is committed."""


@functools.lru_cache(maxsize=1024)
def _parsed_matchers(matchers: tuple[str, ...]) -> list[Matcher]:
    return parse_matchers(matchers)


def _parsed(silence: Silence) -> list[Matcher]:
    return _parsed_matchers(silence.matchers)


def _selects(flt: ListFilter, alert: Alert) -> bool:
    """Whether `alerts.list`'s query would select `alert` (for alerts not yet stored)."""
    return (
        (flt.severity is None or alert.severity == flt.severity)
        and (flt.states is None or alert.state in flt.states)
        and (flt.category is None or alert.category == flt.category)
        and (flt.since is None or alert.last_seen >= flt.since)
        and (flt.include_cleared or alert.cleared_at is None)
    )


class AlertManager:
    """Owns the alerts database and the open alerts, keyed by fingerprint.

    All mutations go through one lock so the in-memory view and the rows
    never disagree; each mutation commits before it returns.
    """

    name = "alerts"

    def __init__(
        self,
        db: Database,
        config: AlertsConfig,
        *,
        clock: Clock = time.time,
        host: str | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self.host = host or socket.gethostname()
        self._open: dict[str, Alert] = {}
        self._by_id: dict[str, Alert] = {}  # the open alerts again, by id
        self._recent: dict[str, Alert] = {}
        self._silences: dict[str, Silence] = {}
        # Alerts that fired while their row could not be written (full disk).
        self._held: dict[str, Alert] = {}
        self._lock = anyio.Lock()
        self.dropped_over_cap = 0
        self._state = "starting"
        # Notification hooks (the notifier); each is awaited under the lock so
        # its own durable write lands before the next change to the alert.
        self.listeners: list[AlertListener] = []

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        """Open the database and load open alerts and silences.

        Raises:
            StoreFailed: the database cannot be opened; the manager is `failed`.
        """
        try:
            await self.db.open()
        except StoreFailed:
            self._state = "failed"
            raise
        window = self.config.reopen_window_seconds
        opened, recent, silences = await self.db.read(
            lambda c: (
                store.load_open(c),
                store.load_recently_resolved(c, self.clock() - window),
                store.load_silences(c),
            )
        )
        self._open = {a.fingerprint: a for a in opened}
        self._by_id = {a.id: a for a in opened}
        self._recent = {a.fingerprint: a for a in recent}
        self._silences = {s.id: s for s in silences}
        self._state = "running"
        log.info("%d open alerts, %d silences loaded", len(self._open), len(self._silences))

    async def start(self, tg: TaskGroup) -> None:
        # A database that cannot be opened costs the alerts, not the daemon.
        with contextlib.suppress(StoreFailed):
            await self.open()
        tg.start_soon(self._housekeeping)

    def apply_config(self, config: Any) -> None:
        self.config = config.alerts

    async def stop(self) -> None:
        """Flush coalesced updates and close the database."""
        failed = self._state == "failed"
        self._state = "stopped"
        try:
            if not failed:
                await self.flush()
        except StorageUnavailable as exc:
            log.error("alert changes not written at shutdown: %s", exc.message)
        finally:
            await self.db.close()

    def state(self) -> dict[str, Any]:
        by_severity = {s.name: 0 for s in Severity}
        for alert in self._visible_open():
            by_severity[alert.severity.name] += 1
        return {
            "state": self._state,
            "active": sum(by_severity.values()),
            "active_by_severity": by_severity,
            "firing": sum(1 for a in self._open.values() if a.state == "firing"),
            "silences": sum(1 for s in self._silences.values() if s.active_at(self.clock())),
            "dropped_over_cap": self.dropped_over_cap,
            "held_in_memory": len(self._held),
            "storage": self.db.state(),
            **self.db.failure_reason(),
        }

    def _visible_open(self) -> list[Alert]:
        return [a for a in self._open.values() if a.cleared_at is None]

    async def _housekeeping(self) -> None:
        last_prune = -PRUNE_INTERVAL
        while True:
            await anyio.sleep(FLUSH_INTERVAL)
            if self._state != "running":
                continue
            try:
                await self.flush(only_due=True)
                now = time.monotonic()
                if now - last_prune >= PRUNE_INTERVAL:
                    last_prune = now
                    await self.prune()
            except StorageUnavailable:
                pass  # a full or read-only disk, logged by the store once; retried next round
            except Exception:  # isolation boundary: housekeeping retries next round
                log.exception("alerts housekeeping failed")

    async def flush(self, *, only_due: bool = False) -> int:
        """Write coalesced count/last_seen updates; returns how many rows."""
        async with self._lock:
            now = self.clock()
            due = [
                a
                for a in self._open.values()
                if a.dirty and (not only_due or now - a.written_at >= self.config.coalesce_seconds)
            ]
            if due:
                await self._save(due)
            return len(due)

    async def prune(self) -> int:
        """Apply retention and the history cap."""
        now = self.clock()
        older = now - self.config.retention_days * DAY
        keep = self.config.history_max
        deleted = await self.db.run(lambda c: store.prune(c, older, keep, now))
        async with self._lock:
            self._silences = {k: s for k, s in self._silences.items() if s.ends_at >= older}
            horizon = now - self.config.reopen_window_seconds
            self._recent = {
                k: a for k, a in self._recent.items() if (a.resolved_at or 0) >= horizon
            }
        if deleted:
            log.info("pruned %d old alerts", deleted)
        return deleted

    async def _save(self, alerts: list[Alert]) -> None:
        await self.db.run(lambda c: store.save(c, alerts))
        now = self.clock()
        for alert in alerts:
            alert.written_at = now
            alert.dirty = False
            if self._held.pop(alert.id, None) is not None:
                log.info("alert %s held in memory is now stored", alert.id)

    async def _save_or_hold(self, alerts: list[Alert], hold: bool) -> None:
        """Save; with `hold`, a storage fault leaves the alerts dirty for the next flush."""
        try:
            await self._save(alerts)
        except StorageUnavailable as exc:
            if not hold:
                raise
            for alert in alerts:
                alert.dirty = True
                if alert.id not in self._held:
                    self._held[alert.id] = alert
                    log.warning("alert %s held in memory: %s", alert.id, exc.message)

    # -- conditions --------------------------------------------------------

    async def notice(
        self,
        *,
        source: str,
        labels: Mapping[str, str],
        severity: Severity,
        category: str,
        title: str,
        description: str = "",
        annotations: Mapping[str, Any] | None = None,
        hold: bool = False,
    ) -> Alert:
        """Report that a condition holds; returns its (new or updated) alert.

        With `hold`, a full or read-only disk does not stop the alert: it
        fires from memory and is written when there is room again.

        Raises:
            AlertCapReached: a new alert would exceed `alerts.max_active`.
            StorageUnavailable: (without `hold`) the change could not be stored.
        """
        fp = fingerprint(source, labels)
        async with self._lock:
            now = self.clock()
            alert = self._open.get(fp)
            if alert is not None:
                return await self._update(
                    alert, now, severity, title, description, annotations, hold
                )
            previous = self._recent.get(fp)
            if (
                previous is not None
                and previous.resolved_at is not None
                and now - previous.resolved_at <= self.config.reopen_window_seconds
            ):
                return await self._reopen(
                    previous, now, severity, title, description, annotations, hold
                )
            if len(self._open) >= self.config.max_active:
                self.dropped_over_cap += 1
                if self.dropped_over_cap == 1 or self.dropped_over_cap % 100 == 0:
                    log.warning(
                        "active alert cap %d reached; %d new alerts dropped",
                        self.config.max_active,
                        self.dropped_over_cap,
                    )
                raise AlertCapReached(self.config.max_active)
            alert = Alert(
                id=str(uuid.uuid4()),
                fingerprint=fp,
                source=source,
                severity=severity,
                category=category,
                title=title,
                description=description,
                labels=dict(labels),
                annotations=dict(annotations or {}),
                state="firing",
                first_seen=now,
                last_seen=now,
                count=1,
                host=self.host,
            )
            await self._save_or_hold([alert], hold)
            self._open[fp] = alert
            self._by_id[alert.id] = alert
            log.info("alert %s fired: %s (%s)", alert.id, title, severity.name)
            await self._emit("fired", alert)
            return alert

    async def _update(
        self,
        alert: Alert,
        now: float,
        severity: Severity,
        title: str,
        description: str,
        annotations: Mapping[str, Any] | None,
        hold: bool = False,
    ) -> Alert:
        alert.count += 1
        alert.last_seen = now
        alert.title = title
        alert.description = description
        if annotations is not None:
            alert.annotations = dict(annotations)
        alert.dirty = True
        changed = severity != alert.severity
        rose = changed and severity > alert.severity
        if changed:
            if severity > alert.severity and alert.state == "acknowledged":
                alert.state = "firing"
                alert.acknowledged_at = alert.acknowledged_by = None
                alert.cleared_at = None
            log.info("alert %s severity %s -> %s", alert.id, alert.severity.name, severity.name)
            alert.severity = severity
        if changed or now - alert.written_at >= self.config.coalesce_seconds:
            await self._save_or_hold([alert], hold)
        if rose:
            await self._emit("escalated", alert)
        return alert

    async def _reopen(
        self,
        alert: Alert,
        now: float,
        severity: Severity,
        title: str,
        description: str,
        annotations: Mapping[str, Any] | None,
        hold: bool = False,
    ) -> Alert:
        alert.state = "firing"
        alert.resolved_at = None
        alert.acknowledged_at = alert.acknowledged_by = None
        alert.severity = severity
        alert.count += 1
        alert.last_seen = now
        alert.title = title
        alert.description = description
        if annotations is not None:
            alert.annotations = dict(annotations)
        alert.annotations["reopened"] = int(alert.annotations.get("reopened", 0)) + 1
        await self._save_or_hold([alert], hold)
        del self._recent[alert.fingerprint]
        self._open[alert.fingerprint] = alert
        self._by_id[alert.id] = alert
        log.info("alert %s re-opened: %s", alert.id, title)
        await self._emit("reopened", alert)
        return alert

    async def condition_cleared(self, *, source: str, labels: Mapping[str, str]) -> Alert | None:
        """The condition no longer holds: resolve its open alert, if any."""
        fp = fingerprint(source, labels)
        async with self._lock:
            alert = self._open.get(fp)
            if alert is None:
                return None
            await self._resolve(alert, self.clock())
            return alert

    async def _resolve(self, alert: Alert, now: float) -> None:
        previous = (alert.state, alert.resolved_at)
        alert.state = "resolved"
        alert.resolved_at = now
        try:
            await self._save([alert])
        except BaseException:
            alert.state, alert.resolved_at = previous
            raise
        self._open.pop(alert.fingerprint, None)
        self._by_id.pop(alert.id, None)
        if alert.cleared_at is None:
            self._recent[alert.fingerprint] = alert
        log.info("alert %s resolved: %s", alert.id, alert.title)
        await self._emit("resolved", alert)

    async def _emit(self, event: str, alert: Alert) -> None:
        for listener in list(self.listeners):
            try:
                await listener(event, alert)
            except Exception:  # isolation boundary: a notifier failure never fails the alert
                log.exception("alert listener failed on %s of %s", event, alert.id)

    def is_open(self, source: str, labels: Mapping[str, str]) -> bool:
        return fingerprint(source, labels) in self._open

    # -- operator actions ------------------------------------------------

    async def get(self, alert_id: str) -> Alert:
        """Raises NotFound."""
        alert = self._by_id.get(alert_id)
        if alert is not None:
            return alert
        found = await self.db.read(lambda c: store.get(c, alert_id))
        if found is None:
            raise NotFound(f"no alert {alert_id!r}", id=alert_id)
        return found

    async def query(self, flt: ListFilter) -> list[Alert]:
        """Alerts matching `flt`, most recently seen first; open ones from memory."""
        rows = await self.db.read(lambda c: store.select(c, flt))
        merged = [self._by_id.get(a.id, a) for a in rows]
        listed = {a.id for a in merged}
        merged.extend(a for a in self._held.values() if a.id not in listed and _selects(flt, a))
        merged.sort(key=lambda a: a.last_seen, reverse=True)
        return merged[: flt.limit]

    async def acknowledge(self, alert_id: str, by: str) -> Alert:
        """Acknowledge one alert. Raises NotFound; resolved alerts stay resolved."""
        async with self._lock:
            alert = self._by_id.get(alert_id)
            if alert is None:
                await self._must_exist(alert_id)
                found = await self.get(alert_id)
                return found
            if alert.state == "firing":
                await self._ack([alert], by)
            return alert

    async def acknowledge_matching(self, flt: ListFilter, by: str) -> list[Alert]:
        """Acknowledge every firing alert matching `flt` (states ignored)."""
        async with self._lock:
            chosen = [
                a
                for a in self._open.values()
                if a.state == "firing"
                and a.cleared_at is None
                and (flt.severity is None or a.severity == flt.severity)
                and (flt.category is None or a.category == flt.category)
                and (flt.since is None or a.last_seen >= flt.since)
            ]
            if chosen:
                await self._ack(chosen, by)
            return chosen

    async def _ack(self, alerts: list[Alert], by: str) -> None:
        now = self.clock()
        for alert in alerts:
            alert.state = "acknowledged"
            alert.acknowledged_at = now
            alert.acknowledged_by = by
        try:
            await self._save(alerts)
        except BaseException:
            for alert in alerts:
                alert.state = "firing"
                alert.acknowledged_at = alert.acknowledged_by = None
            raise
        log.info("%d alert(s) acknowledged by %s", len(alerts), by)

    async def resolve(self, alert_id: str) -> Alert:
        """Resolve one alert by hand. Raises NotFound."""
        async with self._lock:
            alert = self._by_id.get(alert_id)
            if alert is None:
                await self._must_exist(alert_id)
                return await self.get(alert_id)
            await self._resolve(alert, self.clock())
            return alert

    async def _must_exist(self, alert_id: str) -> None:
        found = await self.db.read(lambda c: store.get(c, alert_id))
        if found is None:
            raise NotFound(f"no alert {alert_id!r}", id=alert_id)

    async def clear(self) -> int:
        """Move acknowledged and resolved alerts out of the active list."""
        async with self._lock:
            now = self.clock()
            await self.flush_locked()
            ids = set(await self.db.run(lambda c: store.clear_inactive(c, now)))
            for alert in self._open.values():
                if alert.id in ids:
                    alert.cleared_at = now
            self._recent = {k: a for k, a in self._recent.items() if a.id not in ids}
            return len(ids)

    async def flush_locked(self) -> None:
        dirty = [a for a in self._open.values() if a.dirty]
        if dirty:
            await self._save(dirty)

    # -- silences --------------------------------------------------------

    async def add_silence(
        self, matchers: list[str], duration: float, comment: str, by: str
    ) -> Silence:
        """Store a silence. Raises MatcherError (a ValueError) for bad matchers."""
        parsed = parse_matchers(matchers)
        now = self.clock()
        silence = Silence(
            id=str(uuid.uuid4()),
            matchers=tuple(str(m) for m in parsed),
            comment=comment,
            created_by=by,
            created_at=now,
            starts_at=now,
            ends_at=now + duration,
        )
        await self.db.run(lambda c: store.save_silence(c, silence))
        self._silences[silence.id] = silence
        return silence

    def silences(self, *, include_expired: bool = False) -> list[Silence]:
        now = self.clock()
        return [s for s in self._silences.values() if include_expired or s.active_at(now)]

    async def delete_silence(self, silence_id: str) -> None:
        """Raises NotFound."""
        if silence_id not in self._silences:
            raise NotFound(f"no silence {silence_id!r}", id=silence_id)
        await self.db.run(lambda c: store.delete_silence(c, silence_id))
        del self._silences[silence_id]

    def is_silenced(self, alert: Alert) -> bool:
        """Whether an active silence matches the alert (notifications skip it)."""
        now = self.clock()
        labels = alert.match_labels()
        return any(
            s.active_at(now) and all_match(_parsed(s), labels) for s in self._silences.values()
        )

    # -- blobs for other parts of the daemon (the health snapshot) -------

    async def put_blob(self, key: str, value: bytes) -> None:
        await self.db.run(lambda c: store.put_blob(c, key, value))

    async def get_blob(self, key: str) -> bytes | None:
        return await self.db.read(lambda c: store.get_blob(c, key))
