"""The inference queue: one bounded, two-priority waiting line with a fair share.

Only the event loop touches it (the runner is another process now), so it
needs no lock. Putting never waits: a full queue raises `QueueFull` at once.
Interactive requests always go ahead of background work; within a priority
the order is arrival order.

The share: a caller who is not an admin may have at most `per_user`
requests waiting, and may not take the last `reserved` places, which are
kept for admins (root included) so that one reader resubmitting in a loop
cannot lock them out.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Literal, Protocol, TypeVar

from cortexd.protocol import CortexError, QueueFull

Priority = Literal["interactive", "background"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "background")


class UserQueueFull(QueueFull):
    """One caller already has their share of the queue waiting."""

    def __init__(self, limit: int, depth: int) -> None:
        # QueueFull's own message names only the depth; this one names the share.
        CortexError.__init__(
            self,
            f"you already have {limit} requests waiting, the most one user may "
            "(inference.max_queued_per_user)",
            depth=depth,
            scope="user",
            limit=limit,
        )


class Queued(Protocol):
    """What the queue needs to know about an item."""

    @property
    def request_id(self) -> str: ...

    @property
    def priority(self) -> Priority: ...

    @property
    def uid(self) -> int: ...


T = TypeVar("T", bound=Queued)


def user_share(depth: int, configured: int) -> int:
    """`inference.max_queued_per_user`, or by default a quarter of the queue (at least 1)."""
    return configured if configured > 0 else max(1, depth // 4)


class RequestQueue(Generic[T]):
    """Bounded waiting line with two priorities; `depth` counts waiting items only."""

    def __init__(self, depth: int, per_user: int = 0, reserved: int = 0) -> None:
        self._depth = depth
        self._per_user = user_share(depth, per_user)
        self._reserved = reserved
        self._lanes: dict[Priority, deque[T]] = {p: deque() for p in PRIORITIES}
        self._by_uid: dict[int, int] = {}

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def per_user(self) -> int:
        return self._per_user

    @property
    def reserved(self) -> int:
        return self._reserved

    def resize(self, depth: int, per_user: int = 0, reserved: int = 0) -> None:
        """Take new bounds; items already waiting stay even if over them."""
        self._depth = depth
        self._per_user = user_share(depth, per_user)
        self._reserved = reserved

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def waiting_for(self, uid: int) -> int:
        """How many items of `uid` are waiting."""
        return self._by_uid.get(uid, 0)

    def put_nowait(self, item: T, *, privileged: bool = True) -> int:
        """Add `item`; returns its 1-based position.

        `privileged` (an admin or root) may use every place and has no
        per-user share.

        Raises:
            UserQueueFull: an unprivileged caller has `per_user` items waiting
                (data: scope "user", limit, depth).
            QueueFull: the places open to the caller are taken (data: depth,
                scope "queue", reserved).
        """
        waiting = len(self)
        if not privileged:
            if self._by_uid.get(item.uid, 0) >= self._per_user:
                raise UserQueueFull(self._per_user, self._depth)
            open_places = self._depth - self._reserved
        else:
            open_places = self._depth
        if waiting >= open_places:
            full = QueueFull(self._depth)
            full.data.update(scope="queue", reserved=self._reserved)
            raise full
        self._lanes[item.priority].append(item)
        self._by_uid[item.uid] = self._by_uid.get(item.uid, 0) + 1
        return self._position(item)

    def pop(self) -> T | None:
        """The next item to run, or None if nothing waits."""
        for priority in PRIORITIES:
            lane = self._lanes[priority]
            if lane:
                item = lane.popleft()
                self._forget(item)
                return item
        return None

    def remove(self, request_id: str) -> T | None:
        """Take a waiting item out (cancellation); None if it is not waiting any more."""
        for lane in self._lanes.values():
            for item in lane:
                if item.request_id == request_id:
                    lane.remove(item)
                    self._forget(item)
                    return item
        return None

    def drain(self) -> list[T]:
        """Remove and return every waiting item, in run order."""
        items = self._ordered()
        for lane in self._lanes.values():
            lane.clear()
        self._by_uid.clear()
        return items

    def position(self, request_id: str) -> int | None:
        """1-based place in the line (the next to run is 1); None if not waiting."""
        for index, item in enumerate(self._ordered()):
            if item.request_id == request_id:
                return index + 1
        return None

    def _position(self, item: T) -> int:
        if item.priority == "interactive":
            return len(self._lanes["interactive"])
        return len(self._lanes["interactive"]) + len(self._lanes["background"])

    def _forget(self, item: T) -> None:
        left = self._by_uid.get(item.uid, 0) - 1
        if left > 0:
            self._by_uid[item.uid] = left
        else:
            self._by_uid.pop(item.uid, None)

    def snapshot(self) -> list[T]:
        """Waiting items in the order they will run."""
        return self._ordered()

    def _ordered(self) -> list[T]:
        return [item for p in PRIORITIES for item in self._lanes[p]]
