"""The request queue: bounded, two priorities, positions, removal, each user's share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cortexd.inference.queue import Priority, RequestQueue, UserQueueFull, user_share
from cortexd.protocol import ErrorCode, QueueFull


@dataclass
class Item:
    request_id: str
    priority: Priority = "interactive"
    uid: int = 1000


def test_interactive_requests_go_before_background_work() -> None:
    q: RequestQueue[Item] = RequestQueue(10)
    q.put_nowait(Item("b1", "background"))
    q.put_nowait(Item("i1"))
    q.put_nowait(Item("b2", "background"))
    q.put_nowait(Item("i2"))
    assert [q.position(r) for r in ("i1", "i2", "b1", "b2")] == [1, 2, 3, 4]
    assert [q.pop().request_id for _ in range(4)] == ["i1", "i2", "b1", "b2"]  # type: ignore[union-attr]
    assert q.pop() is None


def test_put_returns_the_position_it_will_run_at() -> None:
    q: RequestQueue[Item] = RequestQueue(10)
    assert q.put_nowait(Item("b1", "background")) == 1
    assert q.put_nowait(Item("i1")) == 1
    assert q.put_nowait(Item("b2", "background")) == 3
    assert q.put_nowait(Item("i2")) == 2


def test_a_full_queue_refuses_at_once_with_its_depth() -> None:
    q: RequestQueue[Item] = RequestQueue(2)
    assert q.put_nowait(Item("a")) == 1
    assert q.put_nowait(Item("b", "background")) == 2
    with pytest.raises(QueueFull) as info:
        q.put_nowait(Item("c"))
    assert info.value.data["depth"] == 2
    assert info.value.data["scope"] == "queue"
    assert len(q) == 2


def test_removed_requests_free_their_place() -> None:
    q: RequestQueue[Item] = RequestQueue(2)
    q.put_nowait(Item("a"))
    q.put_nowait(Item("b"))
    assert q.remove("a") is not None
    assert q.remove("a") is None
    assert q.position("b") == 1
    q.put_nowait(Item("c"))
    assert [i.request_id for i in q.snapshot()] == ["b", "c"]


def test_drain_empties_in_run_order() -> None:
    q: RequestQueue[Item] = RequestQueue(5)
    q.put_nowait(Item("b", "background"))
    q.put_nowait(Item("a"))
    assert [i.request_id for i in q.drain()] == ["a", "b"]
    assert len(q) == 0
    assert q.waiting_for(1000) == 0


def test_the_default_share_is_a_quarter_of_the_queue() -> None:
    assert user_share(100, 0) == 25
    assert user_share(3, 0) == 1
    assert user_share(100, 7) == 7


def test_a_reader_may_not_hold_more_than_their_share() -> None:
    q: RequestQueue[Item] = RequestQueue(8)  # share 2, nothing reserved
    q.put_nowait(Item("a", uid=1001), privileged=False)
    q.put_nowait(Item("b", uid=1001), privileged=False)
    with pytest.raises(UserQueueFull) as info:
        q.put_nowait(Item("c", uid=1001), privileged=False)
    error = info.value
    assert error.code == ErrorCode.QUEUE_FULL
    assert error.data == {"depth": 8, "scope": "user", "limit": 2}
    assert "inference.max_queued_per_user" in error.message
    # Another reader still gets in, and so does the same uid once one left.
    q.put_nowait(Item("d", uid=1002), privileged=False)
    q.pop()
    q.put_nowait(Item("c", uid=1001), privileged=False)
    assert q.waiting_for(1001) == 2


def test_readers_cannot_take_the_places_kept_for_admins() -> None:
    q: RequestQueue[Item] = RequestQueue(4, per_user=4, reserved=2)
    q.put_nowait(Item("r1", uid=1001), privileged=False)
    q.put_nowait(Item("r2", uid=1002), privileged=False)
    with pytest.raises(QueueFull) as info:
        q.put_nowait(Item("r3", uid=1003), privileged=False)
    assert info.value.data == {"depth": 4, "scope": "queue", "reserved": 2}
    q.put_nowait(Item("a1", uid=0))
    q.put_nowait(Item("a2", uid=0))  # admins have no per-user share
    with pytest.raises(QueueFull):
        q.put_nowait(Item("a3", uid=0))


def test_resize_takes_new_bounds_and_keeps_what_waits() -> None:
    q: RequestQueue[Item] = RequestQueue(4)
    for n in range(4):
        q.put_nowait(Item(f"x{n}", uid=n))
    q.resize(2, per_user=1, reserved=0)
    assert len(q) == 4
    assert (q.depth, q.per_user, q.reserved) == (2, 1, 0)
    with pytest.raises(QueueFull):
        q.put_nowait(Item("y"))
