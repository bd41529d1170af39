"""Keeping firing alerts alive in Alertmanager.

Alertmanager ends an alert that is not re-sent before its `endsAt`. Every
`notify.alertmanager_resend_seconds` the last firing (or flapping) message
each `alertmanager` action was told is sent again, outside the outbox: it
repeats what the receiver already has, so a lost one costs nothing.
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
            for (name, fp), event in list(self.firing.items()):
                action = self._actions(name)
                if action is None:
                    self.firing.pop((name, fp), None)
                    continue
                tg.start_soon(self._resend, action, event)

    async def _resend(self, action: Action, event: dict[str, Any]) -> None:
        try:
            await self._send(action, event, f"resend-{event['alert'].get('id', '')}")
        except Exception as exc:  # isolation boundary: the next keep-alive tries again
            log.warning("re-sending a firing alert to %s failed: %s", action.name, exc)
