"""The request queue: bounded, two priorities, positions, removal, interruption."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from cortexd.inference.queue import Priority, RequestQueue
from cortexd.protocol import QueueFull


@dataclass
class Item:
    request_id: str
    priority: Priority = "interactive"


def test_interactive_requests_go_before_background_work() -> None:
    q: RequestQueue[Item] = RequestQueue(10)
    q.put_nowait(Item("b1", "background"))
    q.put_nowait(Item("i1"))
    q.put_nowait(Item("b2", "background"))
    q.put_nowait(Item("i2"))
    assert [q.position(r) for r in ("i1", "i2", "b1", "b2")] == [1, 2, 3, 4]
    assert [q.get(0).request_id for _ in range(4)] == ["i1", "i2", "b1", "b2"]  # type: ignore[union-attr]


def test_a_full_queue_refuses_at_once_with_its_depth() -> None:
    q: RequestQueue[Item] = RequestQueue(2)
    assert q.put_nowait(Item("a")) == 1
    assert q.put_nowait(Item("b", "background")) == 2
    with pytest.raises(QueueFull) as info:
        q.put_nowait(Item("c"))
    assert info.value.data["depth"] == 2
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


def test_get_times_out_and_wakes_for_interrupt() -> None:
    q: RequestQueue[Item] = RequestQueue(2)
    assert q.get(0.01) is None
    got: list[Item | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get(30)))
    worker.start()
    q.interrupt()
    worker.join(10)
    assert got == [None]


def test_a_blocked_get_receives_the_next_item() -> None:
    q: RequestQueue[Item] = RequestQueue(2)
    got: list[Item | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get(30)))
    worker.start()
    q.put_nowait(Item("x"))
    worker.join(10)
    assert [i.request_id for i in got if i] == ["x"]


def test_drain_empties_in_run_order() -> None:
    q: RequestQueue[Item] = RequestQueue(5)
    q.put_nowait(Item("b", "background"))
    q.put_nowait(Item("a"))
    assert [i.request_id for i in q.drain()] == ["a", "b"]
    assert len(q) == 0
