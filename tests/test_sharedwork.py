"""SharedWork: one run per key at a time, and at most one per interval for readers.

Pure logic with a stepped clock; the real-account storm of forced update
checks is in tests/security/test_escalation.py.
"""

from __future__ import annotations

import anyio

from cortexd.sharedwork import MAX_KEPT, SharedWork


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_callers_during_a_run_join_it() -> None:
    clock = Clock()
    shared: SharedWork[int] = SharedWork(clock)
    runs = 0
    release = anyio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return runs

    outcomes = []

    async def call(limited: bool) -> None:
        outcomes.append(await shared.run("k", work, limited=limited, min_interval=60))

    async with anyio.create_task_group() as tg:
        for limited in (True, False, True, True, False):
            tg.start_soon(call, limited)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert runs == 1
    assert sorted(o.how for o in outcomes) == ["joined"] * 4 + ["ran"]
    assert {o.value for o in outcomes} == {1}


async def test_limited_callers_get_the_last_result_within_the_interval() -> None:
    clock = Clock()
    shared: SharedWork[int] = SharedWork(clock)
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        return runs

    assert (await shared.run("k", work, limited=True, min_interval=60)).how == "ran"
    clock.now += 59
    cached = await shared.run("k", work, limited=True, min_interval=60)
    assert (cached.how, cached.value, cached.age_seconds) == ("cached", 1, 59)
    # An admin is not limited...
    assert (await shared.run("k", work, limited=False, min_interval=60)).value == 2
    # ...and another key is its own.
    assert (await shared.run("other", work, limited=True, min_interval=60)).how == "ran"
    clock.now += 61
    assert (await shared.run("k", work, limited=True, min_interval=60)).how == "ran"
    assert runs == 4


async def test_a_failed_run_fails_its_joiners_and_is_not_cached() -> None:
    shared: SharedWork[int] = SharedWork(Clock())
    release = anyio.Event()

    async def work() -> int:
        await release.wait()
        raise ValueError("apt failed")

    errors = []

    async def call() -> None:
        try:
            await shared.run("k", work, limited=True, min_interval=60)
        except ValueError as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert errors == ["apt failed", "apt failed"]
    assert shared.last("k") is None


async def test_a_cancelled_run_lets_its_joiner_run() -> None:
    shared: SharedWork[str] = SharedWork(Clock())
    started = anyio.Event()
    scopes: list[anyio.CancelScope] = []

    async def slow() -> str:
        started.set()
        await anyio.sleep(3600)
        return "never"

    async def quick() -> str:
        return "mine"

    async def first() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await shared.run("k", slow, limited=False, min_interval=60)

    results = []

    async def joiner() -> None:
        results.append(await shared.run("k", quick, limited=True, min_interval=60))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await started.wait()
        tg.start_soon(joiner)
        await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()
    assert [(r.how, r.value) for r in results] == [("ran", "mine")]


async def test_the_kept_results_are_bounded() -> None:
    shared: SharedWork[int] = SharedWork(Clock())

    async def work() -> int:
        return 1

    for n in range(MAX_KEPT + 10):
        await shared.run(n, work, limited=True, min_interval=60)
    assert shared.last(0) is None
    assert shared.last(MAX_KEPT + 9) is not None
