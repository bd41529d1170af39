"""Keeping firing alerts alive in Alertmanager.

Alertmanager ends an alert that is not re-sent before its `endsAt`. Every
`notify.alertmanager_resend_seconds` the last firing (or flapping) message
each `alertmanager` action was told is sent again, outside the outbox: it
repeats what the receiver already has, so a lost one costs nothing. An
action's alerts go together, up to BATCH in one POST, as Alertmanager's API
takes them: a host with five firing alerts makes one request a round, not
five (at 10,000 hosts, 167 requests a second instead of 833).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from cortexd.notify.model import Action, Answer, Delivery
from cortexd.notify.policy import TOLD_FIRING
from cortexd.notify.store import Message, NotifyStore

log = logging.getLogger(__name__)

# Alerts in one keep-alive POST: about 32 KB of JSON.
BATCH = 100

Send = Callable[[Action, dict[str, Any], "int | str"], Awaitable[Answer]]


def _current(event: dict[str, Any]) -> dict[str, Any]:
    # The label sets a message ended stay ended; a re-send carries only the alert itself.
    return {k: v for k, v in event.items() if k != "ended"}


class Keepalive:
    """The firing messages Alertmanager actions were last told, re-sent on a timer."""

    def __init__(self, actions: Callable[[str], Action | None], send: Send) -> None:
        self._actions = actions
        self._send = send
        self.firing: dict[tuple[str, str], dict[str, Any]] = {}

    def _is_alertmanager(self, name: str) -> bool:
        action = self._actions(name)
        return action is not None and action.type == "alertmanager"

    async def load(self, store: NotifyStore, deliveries: Iterable[Delivery]) -> None:
        """Rebuild from the delivery state and the outbox (at start)."""
        keys = [
            (d.action, d.fingerprint)
            for d in deliveries
            if d.kind in TOLD_FIRING and self._is_alertmanager(d.action)
        ]
        events = await store.last_events(keys) if keys else {}
        self.firing = {key: _current(event) for key, event in events.items()}

    def queued(self, messages: Iterable[Message]) -> None:
        """Messages were queued: firing ones are kept alive from now on, resolved ones end."""
        for name, kind, fp, event in messages:
            if not self._is_alertmanager(name):
                continue
            if kind in TOLD_FIRING:
                self.firing[(name, fp)] = _current(event)
            else:
                self.firing.pop((name, fp), None)

    async def run(self, tg: TaskGroup, interval: Callable[[], float]) -> None:
        while True:
            await anyio.sleep(interval())
            by_action: dict[str, tuple[Action, list[dict[str, Any]]]] = {}
            for (name, fp), event in list(self.firing.items()):
                action = self._actions(name)
                if action is None:
                    self.firing.pop((name, fp), None)
                    continue
                by_action.setdefault(name, (action, []))[1].append(event)
            for action, events in by_action.values():
                for start in range(0, len(events), BATCH):
                    tg.start_soon(self._resend, action, events[start : start + BATCH])

    async def _resend(self, action: Action, events: list[dict[str, Any]]) -> None:
        first = events[0]["alert"].get("id", "")
        try:
            await self._send(action, batch_event(events), f"resend-{first}+{len(events) - 1}")
        except Exception as exc:  # isolation boundary: the next keep-alive tries again
            log.warning(
                "re-sending %d firing alert(s) to %s failed: %s", len(events), action.name, exc
            )


def batch_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One message carrying several firing alerts, for one Alertmanager push."""
    return {"kind": "firing", "batch": events}
