"""Component summaries kept ready for `status`, as JSON bytes.

`status` is what monitoring systems, shell prompts and status lines poll,
often every few seconds on every host, so it must cost little more than a
`ping`. Instead of asking every component for its `state()` and encoding the
answer on every request, the board keeps each component's summary encoded
and the whole `components` object joined. A component's summary is read
again when the component publishes a change (`publish`) or once it is older
than the component's `state_max_age` (seconds; `DEFAULT_MAX_AGE` unless the
component sets its own, None for "only when published"). A `status` request
therefore costs one clock read and a comparison while nothing is due, and
never work proportional to the number of components. A request that may
change state (any method not marked `changes_state=False`) makes the next
`status` read every summary again: a client sees its own change at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)

# How stale a summary may be: a state change shows in `status` within this.
DEFAULT_MAX_AGE = 0.1


class Summarised(Protocol):
    """What the board needs of a component: its name and its `state()`."""

    name: str

    def state(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class _Entry:
    read: Callable[[], dict[str, Any]]
    max_age: float | None
    key: bytes
    encoded: bytes | None = None
    expires: float = 0.0


class SummaryBoard:
    """The encoded `state()` of each component in `components`, in their order.

    `components` is the daemon's list; components added to it later (before
    the first `status`, as features install) are picked up on the next read.
    """

    def __init__(
        self,
        components: Sequence[Summarised],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._components = components
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._seen = -1
        self._changes = 0
        self._joined: bytes | None = None
        self._expires = 0.0

    def publish_all(self) -> None:
        """Read every summary again for the next `status`."""
        for entry in self._entries.values():
            entry.encoded = None
        self._joined = None

    def publish(self, name: str) -> None:
        """`name`'s state changed: read it again for the next `status`."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.encoded = None
        self._joined = None

    def components_json(self, first: dict[str, Any] | None = None, *, changes: int = 0) -> bytes:
        """The `components` object, encoded; `first` (name → summary) goes before the others.

        `first` is for what changes on every request (the server's in-flight
        count): it is encoded each time, the rest only when due. `changes`
        counts the requests that may have changed a summary (the server's
        `changes`): when it moved, every summary is read again, so a client
        sees its own change in the next `status`.
        """
        if changes != self._changes:
            self._changes = changes
            self.publish_all()
        joined = self._joined_now()
        if not first:
            return joined
        head = orjson.dumps(first)
        if joined == b"{}":
            return head
        return head[:-1] + b"," + joined[1:]

    def _joined_now(self) -> bytes:
        if len(self._components) != self._seen:
            self._track()
        now = self._clock()
        if self._joined is not None and now < self._expires:
            return self._joined
        parts = []
        expires = math.inf
        for name, entry in self._entries.items():
            if entry.encoded is None or now >= entry.expires:
                entry.encoded = _encode(name, entry.read)
                entry.expires = math.inf if entry.max_age is None else now + entry.max_age
            expires = min(expires, entry.expires)
            parts.append(entry.key + entry.encoded)
        self._joined = b"{" + b",".join(parts) + b"}"
        self._expires = expires
        return self._joined

    def _track(self) -> None:
        entries: dict[str, _Entry] = {}
        for component in self._components:
            max_age = getattr(component, "state_max_age", DEFAULT_MAX_AGE)
            key = orjson.dumps(component.name) + b":"
            entries[component.name] = _Entry(component.state, max_age, key)
        self._entries = entries
        self._seen = len(self._components)
        self._joined = None


def _encode(name: str, read: Callable[[], dict[str, Any]]) -> bytes:
    try:
        return orjson.dumps(read())
    except Exception as exc:  # isolation boundary: one broken component, not status
        log.exception("%s.state() failed", name)
        return orjson.dumps({"state": "error", "error": str(exc)})
