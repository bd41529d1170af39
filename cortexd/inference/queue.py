"""The inference queue: one bounded, two-priority, thread-safe waiting line.

The event loop puts requests in (never blocking: a full queue raises
`QueueFull` at once) and takes them out again on cancellation; the worker
thread blocks in `get` for the next one. Interactive requests always go
ahead of background work; within a priority the order is arrival order.
A lock guards the two deques because two threads touch them; every critical
section is a few list operations, so the loop never waits on it for long.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, Protocol, TypeVar

from cortexd.protocol import QueueFull

Priority = Literal["interactive", "background"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "background")


class Queued(Protocol):
    """What the queue needs to know about an item."""

    @property
    def request_id(self) -> str: ...

    @property
    def priority(self) -> Priority: ...


T = TypeVar("T", bound=Queued)


class RequestQueue(Generic[T]):
    """Bounded waiting line with two priorities; `depth` counts waiting items only.

    `get` also wakes for `interrupt()` (a control action such as a model load
    or the worker's shutdown), returning None so the worker can look at its
    control state.
    """

    def __init__(self, depth: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._depth = depth
        self._clock = clock
        self._lanes: dict[Priority, deque[T]] = {p: deque() for p in PRIORITIES}
        self._cond = threading.Condition(threading.Lock())
        self._interrupted = False

    @property
    def depth(self) -> int:
        return self._depth

    def resize(self, depth: int) -> None:
        """Take a new bound; items already waiting stay even if over it."""
        with self._cond:
            self._depth = depth

    def __len__(self) -> int:
        with self._cond:
            return self._waiting()

    def _waiting(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def put_nowait(self, item: T) -> int:
        """Add `item`; returns its 1-based position.

        Raises:
            QueueFull: `depth` items are already waiting (data: depth).
        """
        with self._cond:
            if self._waiting() >= self._depth:
                raise QueueFull(self._depth)
            self._lanes[item.priority].append(item)
            self._cond.notify()
            return self._position(item)

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, blocking up to `timeout` seconds (None: no limit).

        Returns None on timeout or after `interrupt()`.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._interrupted:
                    self._interrupted = False
                    return None
                for priority in PRIORITIES:
                    lane = self._lanes[priority]
                    if lane:
                        return lane.popleft()
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def interrupt(self) -> None:
        """Wake the thread blocked in `get` (once) without giving it an item."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def remove(self, request_id: str) -> T | None:
        """Take a waiting item out (cancellation); None if it is not waiting any more."""
        with self._cond:
            for lane in self._lanes.values():
                for item in lane:
                    if item.request_id == request_id:
                        lane.remove(item)
                        return item
        return None

    def drain(self) -> list[T]:
        """Remove and return every waiting item (shutdown)."""
        with self._cond:
            items = [item for p in PRIORITIES for item in self._lanes[p]]
            for lane in self._lanes.values():
                lane.clear()
            return items

    def position(self, request_id: str) -> int | None:
        """1-based place in the line (the next to run is 1); None if not waiting."""
        with self._cond:
            for index, item in enumerate(self._ordered()):
                if item.request_id == request_id:
                    return index + 1
        return None

    def _position(self, item: T) -> int:
        for index, other in enumerate(self._ordered()):
            if other is item:
                return index + 1
        raise AssertionError("item is not queued")  # only called under the lock after append

    def snapshot(self) -> list[T]:
        """Waiting items in the order they will run."""
        with self._cond:
            return list(self._ordered())

    def _ordered(self) -> list[T]:
        return [item for p in PRIORITIES for item in self._lanes[p]]
