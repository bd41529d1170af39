"""The outbox's delivery loop: claim due entries, send each in a worker thread, retry.

Each attempt runs in a worker thread with a per-attempt timeout, at most
`notify.max_concurrent` at once; a failure is retried with exponential
backoff and jitter until `notify.max_attempts`, after which the entry moves
to the dead-letter table. A dead or hanging endpoint holds at most half the
slots; the socket never waits on delivery. Entries about one alert for one
action go out one at a time, in order (see `store.claim_due`).

Action types added at run time (notifier plugins) go through the same
outbox; only the attempt itself is theirs.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from cortexd.config.schema import NotifyConfig
from cortexd.notify.actions import ActionTypes
from cortexd.notify.model import ACTION_TYPES, Action, Answer, DeliveryFailed
from cortexd.notify.payloads import ALERTMANAGER_LIFETIME_FACTOR, build
from cortexd.notify.store import NotifyStore, entry_dict

log = logging.getLogger(__name__)

MAX_IDLE = 5.0
# A hung thread gets this much past its own socket timeout before we stop waiting.
THREAD_GRACE = 2.0
SETTLE_POLL = 0.05
# At shutdown, attempts under way get this long to finish and record their outcome.
STOP_GRACE = 2.0
# An action with `include_explanation` waits at most this long for a CRITICAL
# alert's explanation being made (facts are gathered within 3 s by default).
EXPLANATION_WAIT = 10.0

ExplanationSource = Callable[[str, float], Awaitable[str | None]]
"""(fingerprint, longest wait) -> the deterministic part of the condition's explanation."""


def backoff(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Delay before retry `attempt` (1-based): base·2^(n-1), capped, with jitter in [½, 1]."""
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay * (0.5 + 0.5 * rand())


class Dispatcher:
    """Sends what the outbox holds; owns the attempt counters and the worker slots."""

    def __init__(
        self,
        store: NotifyStore,
        config: NotifyConfig,
        actions: Callable[[str], Action | None],
        action_types: ActionTypes,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.config = config
        self._actions = actions
        self.action_types = action_types
        self.clock = clock
        self.rand = rand
        self._threads = anyio.CapacityLimiter(config.max_concurrent)
        self._wake = anyio.Event()
        self._inflight: dict[int, str] = {}  # entry id -> action name
        self._scope: anyio.CancelScope | None = None
        self._stopping = False
        self._drained = anyio.Event()
        self._done = anyio.Event()
        self.pending = 0
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.dead_lettered: Counter[str] = Counter()
        # Where actions with `include_explanation` find an alert's explanation (the
        # composition root sets it when background explanations exist).
        self.explanations: ExplanationSource | None = None

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def queued(self, count: int) -> None:
        """`count` new entries are in the outbox: look for them now."""
        self.pending += count
        self._wake.set()

    # -- the loop --------------------------------------------------------

    async def run(self) -> None:
        """Deliver until `stop()`; attempts run in this call's own task group."""
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._loop, tg)
        finally:
            self._done.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Take no more entries, let attempts under way finish within `grace`, cancel the rest.

        An entry whose attempt is cancelled stays `processing` and is sent
        again after the next start (delivery is at least once).
        """
        self._stopping = True
        self._wake.set()
        if self._inflight:
            with anyio.move_on_after(grace):
                await self._drained.wait()
        if self._scope is not None:
            self._scope.cancel()
            with anyio.move_on_after(grace):
                await self._done.wait()

    async def _loop(self, tg: Any) -> None:
        while not self._stopping:
            try:
                wait = await self._round(tg)
            except Exception:  # isolation boundary: the loop outlives one bad round
                log.exception("notify delivery round failed")
                wait = MAX_IDLE
            with anyio.move_on_after(max(0.01, min(MAX_IDLE, wait))):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _round(self, tg: Any) -> float:
        free = self.config.max_concurrent - len(self._inflight)
        if free <= 0:
            return MAX_IDLE  # a finishing attempt wakes the loop
        # Half the slots at most per action: a hanging endpoint leaves the rest.
        per_action = max(1, self.config.max_concurrent // 2)
        busy = dict(Counter(self._inflight.values()))
        rows, capped = await self.store.claim(self.clock(), free, busy, per_action)
        for row in rows:
            self._inflight[int(row["id"])] = str(row["action"])
            tg.start_soon(self._attempt, row)
        upcoming = await self.store.next_due()
        if capped or upcoming is None:
            return MAX_IDLE
        return upcoming - self.clock()

    async def _attempt(self, row: Any) -> None:
        entry_id = int(row["id"])
        name = str(row["action"])
        try:
            event = entry_dict(row)["event"]
            action = self._actions(name)
            try:
                if action is None:
                    raise DeliveryFailed(f"action {name!r} is no longer configured")
                answer = await self.send(action, event, entry_id)
            except DeliveryFailed as exc:
                await self._failed(row, name, exc, permanent=action is None)
            except Exception as exc:  # isolation boundary: one action's bug is its failure
                log.exception("notification %d to %s: unexpected failure", entry_id, name)
                failure = DeliveryFailed(f"{type(exc).__name__}: {exc}")
                await self._failed(row, name, failure, permanent=False)
            else:
                self.sent[name] += 1
                self.pending -= 1
                await self.store.complete(entry_id, str(answer.status), answer.text, self.clock())
        except Exception:  # isolation boundary: the entry stays processing until restart
            log.exception("notification %d: delivery bookkeeping failed", entry_id)
        finally:
            self._inflight.pop(entry_id, None)
            self._wake.set()
            if not self._inflight:
                self._drained.set()

    async def _failed(
        self, row: Any, name: str, failure: DeliveryFailed, *, permanent: bool
    ) -> None:
        entry_id = int(row["id"])
        attempt = int(row["attempts"]) + 1
        now = self.clock()
        retry_at = None
        if not permanent:
            delay = backoff(
                attempt, self.config.backoff_seconds, self.config.backoff_max_seconds, self.rand
            )
            retry_at = now + delay
        error = str(failure)
        dead = await self.store.fail(entry_id, error, failure.body, now, retry_at)
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

    # -- one attempt -----------------------------------------------------

    async def send(self, action: Action, event: dict[str, Any], entry_id: int | str) -> Answer:
        """One attempt at `action`, bounded by `notify.attempt_timeout_seconds`.

        Raises:
            DeliveryFailed: refused, failed or timed out. On cancellation the
                worker thread is abandoned; its own socket timeout ends it.
        """
        if action.type not in ACTION_TYPES:
            return await self._send_added(action, event, entry_id)
        event = dict(event)
        if action.get("include_explanation") and event.get("kind") == "firing":
            event["explanation"] = await self._explanation(event)
        if action.type == "alertmanager":
            event["sent_at"] = self.clock()
            event["lifetime"] = (
                self.config.alertmanager_resend_seconds * ALERTMANAGER_LIFETIME_FACTOR
            )
        request = build(action, event, entry_id, external_url=self.config.external_url)
        timeout = self.config.attempt_timeout_seconds
        # smtplib, urllib.request and http.client load with the first
        # delivery: a daemon with no actions to run never holds them.
        from cortexd.notify.send import deliver

        try:
            with anyio.fail_after(timeout + THREAD_GRACE):
                return await anyio.to_thread.run_sync(
                    deliver, request, timeout, abandon_on_cancel=True, limiter=self._threads
                )
        except TimeoutError:
            raise DeliveryFailed(f"no answer in {timeout:g}s") from None

    async def _explanation(self, event: dict[str, Any]) -> str | None:
        if self.explanations is None:
            return None
        return await self.explanations(str(event["alert"]["fingerprint"]), EXPLANATION_WAIT)

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
