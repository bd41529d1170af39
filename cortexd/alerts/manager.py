"""The alert manager: one API through which checks and programs raise alerts.

`notice()` reports that a condition holds (creating, updating or re-opening
its alert), `condition_cleared()` resolves it, operators acknowledge,
resolve, clear and silence. Every state change commits before it returns and
is then announced to the listeners (the notifier, the metrics). Writes for a
persisting condition are coalesced (`alerts.coalesce_seconds`). Events
resolve on their own after their time to live; flapping alerts settle once
they change less often (`cortexd.alerts.flap`). docs/protocol.md ("Alerts")
describes the whole life cycle.

Storage: a notice with `hold=True` (the monitor's) survives a full or
read-only disk: the alert fires and is notified from memory, is listed, and
its row is written by the next flush that finds room. Every other change
fails with StorageUnavailable and leaves nothing half-done. An alerts
database that cannot be opened leaves the manager `failed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts import store
from cortexd.alerts.flap import note_change, settles_at
from cortexd.alerts.index import AlertIndex
from cortexd.alerts.model import (
    Alert,
    AlertCapReached,
    Clock,
    ListFilter,
    Notice,
    Severity,
    Silence,
    fingerprint,
)
from cortexd.alerts.silences import Silences
from cortexd.alerts.upkeep import Upkeep
from cortexd.config.schema import AlertsConfig, Config
from cortexd.protocol import NotFound
from cortexd.store import Database, StorageUnavailable, StoreFailed

__all__ = ["AlertCapReached", "AlertDetail", "AlertListener", "AlertManager"]

log = logging.getLogger(__name__)

DAY = 86400.0


AlertListener = Callable[[str, Alert], Awaitable[None]]
"""Called once a change is committed, with one of: `fired`, `reopened`, `escalated`,
`deescalated`, `updated`, `acknowledged`, `resolved`, `expired`, `flapping`, `settled`."""

AlertDetail = Callable[[Alert], Awaitable[Mapping[str, Any]]]
"""Members another feature adds to `alerts.get`'s answer (the stored explanation)."""


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
        self._index = AlertIndex()
        self._silences = Silences(db, clock)
        self._lock = anyio.Lock()
        self._upkeep = Upkeep(self)
        self.dropped_over_cap = 0
        self._state = "starting"
        # Notification hooks (the notifier); each is awaited under the lock so
        # its own durable write lands before the next change to the alert.
        self.listeners: list[AlertListener] = []
        # What other features add to one alert's answer; set by the composition root.
        self.details: list[AlertDetail] = []

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
        self._index.load(opened, recent)
        self._silences.load(silences)
        self._state = "running"
        log.info("%d open alerts, %d silences loaded", len(opened), len(silences))

    async def start(self, tg: TaskGroup) -> None:
        # A database that cannot be opened costs the alerts, not the daemon.
        with contextlib.suppress(StoreFailed):
            await self.open()
        tg.start_soon(self._upkeep.housekeeping)
        tg.start_soon(self._upkeep.timers)

    def apply_config(self, config: Config) -> None:
        self.config = config.alerts
        self._upkeep.wake()

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
            "firing": sum(1 for a in self._index.open.values() if a.state == "firing"),
            "flapping": sum(1 for a in self.tracked() if a.flapping),
            "silences": self._silences.active_count(),
            "dropped_over_cap": self.dropped_over_cap,
            "held_in_memory": len(self._index.held),
            "storage": self.db.state(),
            **self.db.failure_reason(),
        }

    @property
    def running(self) -> bool:
        return self._state == "running"

    def _visible_open(self) -> list[Alert]:
        return [a for a in self._index.open.values() if a.cleared_at is None]

    async def flush(self, *, only_due: bool = False) -> int:
        """Write coalesced count/last_seen updates; returns how many rows."""
        async with self._lock:
            now = self.clock()
            due = [
                a
                for a in self._index.open.values()
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
            self._silences.forget_ended_before(older)
            horizon = now - self.config.reopen_window_seconds
            self._index.forget_resolved_before(horizon)
        if deleted:
            log.info("pruned %d old alerts", deleted)
        return deleted

    async def _save(self, alerts: list[Alert]) -> None:
        # Shielded: the write runs to its end on the database thread anyway, and a
        # caller cancelled half-way must not roll back in memory what was committed.
        with anyio.CancelScope(shield=True):
            await self.db.run(lambda c: store.save(c, alerts))
        now = self.clock()
        for alert in alerts:
            alert.written_at = now
            alert.dirty = False
            if self._index.stored(alert):
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
                if self._index.hold(alert):
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
        key: str | None = None,
        title_is_identity: bool = False,
        name: str | None = None,
        event: bool = False,
        ttl: float | None = None,
        hold: bool = False,
    ) -> Alert:
        """Report that a condition holds (or an event happened); returns its alert.

        The identity is `source` and `labels`; with `key`, `source` and `key`
        alone; with `title_is_identity`, the title as well. `name` is the
        Alertmanager alertname (default: the source). An `event` resolves on
        its own `alerts.event_ttl_seconds` (or `ttl`) after its last notice.
        With `hold`, a full or read-only disk does not stop the alert: it
        fires from memory and is written when there is room again.

        Raises:
            AlertCapReached: a new alert would exceed `alerts.max_active`.
            StorageUnavailable: (without `hold`) the change could not be stored.
        """
        fp = fingerprint(source, labels, key=key, title=title if title_is_identity else None)
        if ttl is None and event:
            ttl = self.config.event_ttl_seconds
        async with self._lock:
            now = self.clock()
            expires_at = None if ttl is None else now + ttl
            update = Notice(severity, title, description, annotations, labels, name, expires_at)
            alert = self._index.open.get(fp)
            if alert is not None:
                return await self._update(alert, now, update, hold)
            previous = self._index.recent(fp)
            if (
                previous is not None
                and previous.resolved_at is not None
                and (
                    previous.flapping
                    or now - previous.resolved_at <= self.config.reopen_window_seconds
                )
            ):
                return await self._reopen(previous, now, update, hold)
            if len(self._index.open) >= self.config.max_active:
                self.dropped_over_cap += 1
                if self.dropped_over_cap == 1 or self.dropped_over_cap % 100 == 0:
                    log.warning(
                        "active alert cap %d reached; %d new alerts dropped",
                        self.config.max_active,
                        self.dropped_over_cap,
                    )
                raise AlertCapReached(self.config.max_active)
            alert = Alert.first(update, fp, source, category, key, now=now, host=self.host)
            await self._save_or_hold([alert], hold)
            self._index.opened(alert)
            log.info("alert %s fired: %s (%s)", alert.id, title, severity.name)
            await self._emit("fired", alert)
            if expires_at is not None:
                self._upkeep.wake()
            return alert

    async def _update(self, alert: Alert, now: float, update: Notice, hold: bool) -> Alert:
        alert.count += 1
        alert.last_seen = now
        alert.title = update.title
        alert.description = update.description
        if update.annotations is not None:
            alert.annotations = dict(update.annotations)
        alert.expires_at = update.expires_at
        alert.dirty = True
        events: list[str] = []
        flapping = False
        if alert.key is not None and (
            dict(update.labels) != alert.labels or (update.name or "") != alert.name
        ):
            # A keyed alert's labels are not its identity: they change in place.
            alert.labels = dict(update.labels)
            alert.name = update.name or ""
            events.append("updated")
        if update.severity != alert.severity:
            rose = update.severity > alert.severity
            if rose and alert.state == "acknowledged":
                alert.state = "firing"
                alert.acknowledged_at = alert.acknowledged_by = None
                alert.cleared_at = None
            log.info(
                "alert %s severity %s -> %s", alert.id, alert.severity.name, update.severity.name
            )
            alert.severity = update.severity
            events.append("escalated" if rose else "deescalated")
            flapping = self._note_change(alert, now)
        if events or now - alert.written_at >= self.config.coalesce_seconds:
            await self._save_or_hold([alert], hold)
        for event in events:
            await self._emit(event, alert, started_flapping=flapping and event == events[-1])
        if update.expires_at is not None:
            self._upkeep.wake()
        return alert

    async def _reopen(self, alert: Alert, now: float, update: Notice, hold: bool) -> Alert:
        alert.state = "firing"
        alert.resolved_at = None
        alert.acknowledged_at = alert.acknowledged_by = None
        alert.severity = update.severity
        alert.count += 1
        alert.last_seen = now
        alert.title = update.title
        alert.description = update.description
        alert.expires_at = update.expires_at
        if alert.key is not None:
            alert.labels = dict(update.labels)
            alert.name = update.name or ""
        if update.annotations is not None:
            alert.annotations = dict(update.annotations)
        alert.annotations["reopened"] = int(alert.annotations.get("reopened", 0)) + 1
        flapping = self._note_change(alert, now)
        await self._save_or_hold([alert], hold)
        self._index.opened(alert)
        log.info("alert %s re-opened: %s", alert.id, update.title)
        await self._emit("reopened", alert, started_flapping=flapping)
        return alert

    async def condition_cleared(
        self,
        *,
        source: str,
        labels: Mapping[str, str],
        description: str | None = None,
        annotations: Mapping[str, Any] | None = None,
    ) -> Alert | None:
        """The condition no longer holds: resolve its open alert, if any.

        `description` and `annotations`, when given, say how things stand at
        resolution (the value that cleared it); they go out with the
        resolution message.
        """
        fp = fingerprint(source, labels)
        async with self._lock:
            alert = self._index.open.get(fp)
            if alert is None:
                return None
            await self._resolve(alert, self.clock(), description=description, notes=annotations)
            return alert

    async def _resolve(
        self,
        alert: Alert,
        now: float,
        *,
        event: str = "resolved",
        description: str | None = None,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        saved = alert.copy()
        alert.state = "resolved"
        alert.resolved_at = now
        if description is not None:
            alert.description = description
        if notes is not None:
            alert.annotations = {**alert.annotations, **notes}
        flapping = self._note_change(alert, now)
        try:
            await self._save([alert])
        except BaseException:
            alert.restore(saved)
            raise
        self._index.resolved(alert)
        log.info("alert %s %s: %s", alert.id, event, alert.title)
        await self._emit(event, alert, started_flapping=flapping)

    def _note_change(self, alert: Alert, now: float) -> bool:
        """Count one state change towards flap detection; whether flapping began."""
        started = note_change(alert, now, self.config)
        if started:
            self._upkeep.wake()
        return started

    async def _emit(self, event: str, alert: Alert, *, started_flapping: bool = False) -> None:
        await self._tell(event, alert)
        if started_flapping:
            await self._tell("flapping", alert)

    async def _tell(self, event: str, alert: Alert) -> None:
        for listener in list(self.listeners):
            try:
                await listener(event, alert)
            except Exception:  # isolation boundary: a notifier failure never fails the alert
                log.exception("alert listener failed on %s of %s", event, alert.id)

    def current(self, fp: str) -> Alert | None:
        """The alert of fingerprint `fp` if it is open, or resolved and still tracked."""
        return self._index.current(fp)

    def tracked(self) -> Iterator[Alert]:
        """Open alerts, then resolved ones that may re-open or are flapping."""
        return self._index.tracked()

    def open_alerts(self, source: str | None = None) -> list[Alert]:
        """The open alerts (of `source`, if given)."""
        return [a for a in self._index.open.values() if source is None or a.source == source]

    # -- timers: flap settling and event expiry ----------------------------

    async def run_timers(self) -> float | None:
        """Settle flapping alerts and expire events that are due; returns the next due time."""
        async with self._lock:
            now = self.clock()
            upcoming: list[float] = []
            for alert in list(self.tracked()):
                if alert.flapping:
                    at = settles_at(alert, self.config)
                    if at <= now:
                        await self._settle(alert, now)
                    else:
                        upcoming.append(at)
            for alert in list(self._index.open.values()):
                if alert.expires_at is None:
                    continue
                if alert.expires_at <= now:
                    await self._resolve(alert, now, event="expired", notes={"expired": True})
                    if alert.flapping:  # the expiry was a change of its own
                        upcoming.append(settles_at(alert, self.config))
                else:
                    upcoming.append(alert.expires_at)
            return min(upcoming, default=None)

    async def _settle(self, alert: Alert, now: float) -> None:
        alert.flapping = False
        try:
            await self._save([alert])
        except BaseException:
            alert.flapping = True
            raise
        log.info("alert %s settled (%s)", alert.id, alert.state)
        await self._emit("settled", alert)

    # -- operator actions ------------------------------------------------

    async def get(self, alert_id: str) -> Alert:
        """Raises NotFound."""
        alert = self._index.open_by_id(alert_id)
        if alert is not None:
            return alert
        found = await self.db.read(lambda c: store.get(c, alert_id))
        if found is None:
            raise NotFound(f"no alert {alert_id!r}", id=alert_id)
        return found

    async def query(self, flt: ListFilter) -> list[Alert]:
        """Alerts matching `flt`, most recently seen first; open ones from memory."""
        rows = await self.db.read(lambda c: store.select(c, flt))
        tracked = {a.id: a for a in self.tracked()}
        merged = [tracked.get(a.id, a) for a in rows]
        listed = {a.id for a in merged}
        merged.extend(a for a in self._index.held.values() if a.id not in listed and flt.selects(a))
        merged.sort(key=lambda a: a.last_seen, reverse=True)
        return merged[: flt.limit]

    async def acknowledge(self, alert_id: str, by: str) -> Alert:
        """Acknowledge one alert. Raises NotFound; resolved alerts stay resolved."""
        async with self._lock:
            alert = self._index.open_by_id(alert_id)
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
            firing = dataclasses.replace(flt, states=("firing",), include_cleared=False)
            chosen = [a for a in self._index.open.values() if firing.selects(a)]
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
        for alert in alerts:
            await self._emit("acknowledged", alert)

    async def resolve(self, alert_id: str) -> Alert:
        """Resolve one alert by hand. Raises NotFound."""
        async with self._lock:
            alert = self._index.open_by_id(alert_id)
            if alert is None:
                await self._must_exist(alert_id)
                return await self.get(alert_id)
            await self._resolve(alert, self.clock())
            return alert

    async def resolve_key(self, source: str, key: str) -> Alert:
        """Resolve the open alert raised with `key` by `source`. Raises NotFound."""
        async with self._lock:
            alert = self._index.open.get(fingerprint(source, {}, key=key))
            if alert is None:
                raise NotFound(f"no open alert with key {key!r} from {source!r}", key=key)
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
            dirty = [a for a in self._index.open.values() if a.dirty]
            if dirty:
                await self._save(dirty)
            ids = set(await self.db.run(lambda c: store.clear_inactive(c, now)))
            for alert in self._index.open.values():
                if alert.id in ids:
                    alert.cleared_at = now
            self._index.forget_ids(ids)
            return len(ids)

    # -- silences --------------------------------------------------------

    async def add_silence(
        self, matchers: list[str], duration: float, comment: str, by: str
    ) -> Silence:
        """Store a silence. Raises MatcherError (a ValueError) for bad matchers."""
        return await self._silences.add(matchers, duration, comment, by)

    def silences(self, *, include_expired: bool = False) -> list[Silence]:
        return self._silences.listed(include_expired=include_expired)

    async def delete_silence(self, silence_id: str) -> None:
        """Raises NotFound."""
        await self._silences.delete(silence_id)

    def is_silenced(self, alert: Alert) -> bool:
        """Whether an active silence matches the alert (notifications skip it)."""
        return self._silences.matches(alert)

    # -- blobs for other parts of the daemon (the health snapshot) -------

    async def put_blob(self, key: str, value: bytes) -> None:
        await self.db.run(lambda c: store.put_blob(c, key, value))

    async def get_blob(self, key: str) -> bytes | None:
        return await self.db.read(lambda c: store.get_blob(c, key))
