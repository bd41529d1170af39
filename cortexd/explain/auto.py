"""Background explanations of new CRITICAL alerts (`inference.auto_explain`).

The alert manager tells its listeners of every change under its lock, so
the listener here only decides and hands the alert on (`send_nowait` into a
small bounded queue; a full queue drops it and counts the drop). One worker
task explains the alerts one at a time: the deterministic part first, then
the model's summary as a `background` job, which the inference queue always
puts behind interactive requests — an operator's request waits at most for
the one background job already running.

Bounds: at most `inference.auto_explain_per_hour` explanations in any hour,
and one per fingerprint: a condition that fires again within DEDUPE_SECONDS
of its last explanation keeps that one. The explanation is stored in the
alerts database (its key/value table, keyed by fingerprint), so it survives
a restart and the deduplication does too; `alerts.get` shows it. A storage
fault costs the stored explanation, never the alert or the daemon.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from cortexd.alerts.model import Alert, Severity
from cortexd.config.schema import Config
from cortexd.inference.job import GenerationParams, Job
from cortexd.protocol import CortexError
from cortexd.store import StorageUnavailable, StoreFailed

if TYPE_CHECKING:
    from cortexd.explain.service import Explainer
    from cortexd.inference.engine import Engine

log = logging.getLogger(__name__)

QUEUE_SIZE = 16
HOUR = 3600.0
DEDUPE_SECONDS = 86400.0
BLOB_PREFIX = "explanation:"
# Beyond inference.request_timeout: the engine ends a job at its deadline
# and kills a runner that does not stop; this only bounds our own wait.
WAIT_GRACE = 30.0
NEW_EVENTS = frozenset({"fired", "reopened", "escalated"})
# The summary's sampling, as an interactive explain's defaults.
TEMPERATURE = 0.2
TOP_P = 0.9


class Explainers(Protocol):
    """Where the Explainer comes from: built on the first explanation (LazyExplainer)."""

    async def get(self) -> Explainer: ...


class BlobStore(Protocol):
    async def put_blob(self, key: str, value: bytes) -> None: ...

    async def get_blob(self, key: str) -> bytes | None: ...


Queued = tuple[str, str]  # an alert's id and fingerprint
Streams = tuple[MemoryObjectSendStream[Queued], MemoryObjectReceiveStream[Queued]]


def blob_key(fingerprint: str) -> str:
    return BLOB_PREFIX + fingerprint


class AutoExplainer:
    """Explains new CRITICAL alerts in the background and keeps the explanations.

    `on_alert` is an alert listener; `detail` adds the stored explanation to
    `alerts.get`. Both are wired by the composition root.
    """

    name = "auto_explain"

    def __init__(
        self,
        config: Config,
        explainer: Explainers,
        engine: Engine | None,
        store: BlobStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.inference = config.inference
        self.explain_config = config.explain
        self.explainer = explainer
        self.engine = engine
        self.store = store
        self.clock = clock
        self.wall = wall
        # Made on first use, so a daemon built and never run leaves no stream open.
        self._streams: (
            tuple[
                MemoryObjectSendStream[tuple[str, str]], MemoryObjectReceiveStream[tuple[str, str]]
            ]
            | None
        ) = None
        self._working = False
        # Set once a queued condition's deterministic part is stored (or given up on):
        # a notification that includes it waits on this, never longer than it allows.
        self._pending: dict[str, anyio.Event] = {}
        self._starts: deque[float] = deque()
        self._recent: dict[str, float] = {}
        self.counts = {
            "explained": 0,
            "deduplicated": 0,
            "over_rate": 0,
            "queue_full": 0,
            "failed": 0,
        }

    # -- the component -----------------------------------------------------------------

    def _queue(self) -> Streams:
        if self._streams is None:
            self._streams = anyio.create_memory_object_stream[Queued](QUEUE_SIZE)
        return self._streams

    def state(self) -> dict[str, Any]:
        queued = self._streams[1].statistics().current_buffer_used if self._streams else 0
        return {
            "state": "running" if self.inference.auto_explain else "off",
            "per_hour": self.inference.auto_explain_per_hour,
            "queued": queued,
            **self.counts,
        }

    async def start(self, tg: TaskGroup) -> None:
        self._working = True
        tg.start_soon(self._work, self._queue()[1])

    def apply_config(self, config: Config) -> None:
        self.inference = config.inference
        self.explain_config = config.explain

    async def stop(self) -> None:
        """Take no more alerts; the worker ends once it has explained what is queued
        (or is cancelled with the daemon's task group)."""
        if self._streams is None:
            return
        send, receive = self._streams
        send.close()
        if not self._working:
            receive.close()

    # -- deciding, under the alert manager's lock: nothing here waits --------------------

    async def on_alert(self, event: str, alert: Alert) -> None:
        """Queue `alert` for explanation if it is a new CRITICAL one within the bounds."""
        if (
            not self.inference.auto_explain
            or event not in NEW_EVENTS
            or alert.severity != Severity.CRITICAL
        ):
            return
        now = self.clock()
        self._recent = {fp: t for fp, t in self._recent.items() if now - t < DEDUPE_SECONDS}
        if alert.fingerprint in self._recent:
            self.counts["deduplicated"] += 1
            return
        while self._starts and now - self._starts[0] >= HOUR:
            self._starts.popleft()
        if len(self._starts) >= self.inference.auto_explain_per_hour:
            self.counts["over_rate"] += 1
            log.info("not explaining alert %s: %d explained this hour", alert.id, len(self._starts))
            return
        try:
            self._queue()[0].send_nowait((alert.id, alert.fingerprint))
        except anyio.WouldBlock:
            self.counts["queue_full"] += 1
            return
        self._starts.append(now)
        self._recent[alert.fingerprint] = now
        self._pending[alert.fingerprint] = anyio.Event()

    # -- explaining ---------------------------------------------------------------------

    async def _work(self, receive: MemoryObjectReceiveStream[Queued]) -> None:
        async with receive:
            async for alert_id, fingerprint in receive:
                try:
                    await self._explain(alert_id, fingerprint)
                except CortexError as exc:
                    self.counts["failed"] += 1
                    log.warning("background explanation of alert %s failed: %s", alert_id, exc)
                except Exception:  # isolation boundary: never ends the worker or the daemon
                    # The explain modules load here on first use: a package
                    # upgrade under the running daemon can break that import.
                    self.counts["failed"] += 1
                    log.exception("background explanation of alert %s failed", alert_id)
                finally:
                    self._settled(fingerprint)

    def _settled(self, fingerprint: str) -> None:
        event = self._pending.pop(fingerprint, None)
        if event is not None:
            event.set()

    async def _explain(self, alert_id: str, fingerprint: str) -> None:
        stored = await self.stored(fingerprint)
        if stored is not None and self.wall() - float(stored["created"]) < DEDUPE_SECONDS:
            # Explained before a restart: the stored explanation stands.
            self.counts["deduplicated"] += 1
            return
        explainer = await self.explainer.get()
        # Imported with the Explainer (cortexd/explain/methods.py, EXPLAIN_MODULES).
        from cortexd.explain.prompt import explain_messages

        result, topic, alert = await explainer.explain(alert_id, journal=False)
        record = {
            "alert_id": alert.id,
            "fingerprint": fingerprint,
            "created": self.wall(),
            "explanation": result,
            "summary": None,
            "summary_skipped": "being written",
        }
        # The deterministic part first: a notification waiting for it goes out now.
        if not await self._store(record):
            return
        self._settled(fingerprint)
        summary, skipped = await self._summary(explain_messages(alert.title, topic))
        if not await self._store({**record, "summary": summary, "summary_skipped": skipped}):
            return
        self.counts["explained"] += 1
        log.info("alert %s explained in the background (%s)", alert.id, topic.entry.id)

    async def _store(self, record: dict[str, Any]) -> bool:
        try:
            await self.store.put_blob(blob_key(record["fingerprint"]), orjson.dumps(record))
        except (StorageUnavailable, StoreFailed) as exc:
            self.counts["failed"] += 1
            log.warning("the explanation of alert %s is not stored: %s", record["alert_id"], exc)
            return False
        return True

    async def _summary(self, messages: list[dict[str, str]]) -> tuple[str | None, str | None]:
        """The model's summary in the background lane, or why there is none."""
        engine = self.engine
        if engine is None:
            return None, "this daemon runs no inference engine"
        from cortexd.explain.summary import SUMMARY_STOP, Guard

        job = Job(
            request_id=uuid.uuid4().hex[:16],
            priority="background",
            method="auto_explain",
            uid=os.geteuid(),
            params=GenerationParams(
                max_tokens=self.explain_config.max_tokens,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                stop=SUMMARY_STOP,
            ),
            messages=messages,
        )
        guard = Guard()
        try:
            # Not privileged: it never takes the places kept for admins.
            engine.submit(job, privileged=False)
        except CortexError as exc:
            return None, f"{exc.code.name}: {exc.message}"
        try:
            with anyio.move_on_after(self.inference.request_timeout + WAIT_GRACE):
                while True:
                    await job.wait()
                    pieces = job.take_pieces()
                    for piece in pieces:
                        guard.feed(piece)
                    if guard.stopped:
                        engine.cancel_job(job, "cancelled")
                    if job.finished and not pieces:
                        break
            if not job.finished:
                return None, "the model did not answer in time"
            try:
                outcome = job.outcome()
            except CortexError as exc:
                return None, f"{exc.code.name}: {exc.message}"
        finally:
            engine.forget(job)
        if outcome["stop_reason"] in ("cancelled", "timeout") and not guard.stopped:
            return None, f"the summary was cut short ({outcome['stop_reason']})"
        guard.finish()
        text = guard.kept.strip()
        return (text, None) if text else (None, "the model said nothing usable")

    # -- reading back --------------------------------------------------------------------

    async def stored(self, fingerprint: str) -> dict[str, Any] | None:
        """The stored explanation of a condition, or None (also when storage fails)."""
        try:
            blob = await self.store.get_blob(blob_key(fingerprint))
        except (StorageUnavailable, StoreFailed) as exc:
            log.warning("stored explanations cannot be read: %s", exc)
            return None
        if blob is None:
            return None
        record: dict[str, Any] = orjson.loads(blob)
        return record

    async def text_for(self, fingerprint: str, wait: float) -> str | None:
        """The deterministic part's text for a condition, for a notification; waits at most
        `wait` seconds when its explanation is queued or being made. None: there is none."""
        event = self._pending.get(fingerprint)
        if event is not None:
            with anyio.move_on_after(wait):
                await event.wait()
        record = await self.stored(fingerprint)
        return str(record["explanation"]["text"]) if record is not None else None

    async def detail(self, alert: Alert) -> Mapping[str, Any]:
        """`explanation` for `alerts.get`, when one is stored for the alert's condition."""
        record = await self.stored(alert.fingerprint)
        return {} if record is None else {"explanation": record}
