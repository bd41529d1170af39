"""Running an entry's gatherers off the event loop, together, within one deadline.

Each gatherer runs on a worker thread (bounded by a shared capacity limiter)
and keeps to the deadline itself; a gatherer still running a little after it
is abandoned and noted, never waited for. One gatherer's failure is a note
in the answer, not an error: the others' facts still count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread

from cortexd.explain.facts import GATHERERS, CheckView, Context, Fact, Found, Gatherer, Host

log = logging.getLogger(__name__)

# Past the deadline, gatherers get this long to hand back what they have.
HAND_BACK = 0.25


@dataclass(frozen=True, slots=True)
class Gathered:
    facts: tuple[Fact, ...]
    notes: tuple[str, ...]
    seconds: float
    finished: float  # time.monotonic() when gathering ended: the deterministic part's clock


def _run(gatherer: Gatherer, ctx: Context) -> Found:
    found = Found()
    try:
        gatherer.run(ctx, found)
    except Exception as exc:  # isolation boundary: one probe's failure is a note, not an error
        log.warning("fact gatherer %s failed", gatherer.name, exc_info=True)
        found.note(f"{gatherer.name} failed: {type(exc).__name__}: {exc}")
    return found


async def gather(
    names: Sequence[str],
    labels: Mapping[str, str],
    check: CheckView | None,
    host: Host,
    budget: float,
    limiter: anyio.CapacityLimiter,
    registry: Mapping[str, Gatherer] = GATHERERS,
    *,
    journal: bool = True,
) -> Gathered:
    """Run the gatherers `names` (from `registry`) for one subject; facts in `names` order.

    On cancellation the worker threads are abandoned; they stop at their deadline.
    """
    started = time.monotonic()
    ctx = Context(
        labels=dict(labels), check=check, host=host, deadline=started + budget, journal=journal
    )
    results: dict[str, Found] = {}
    notes: list[str] = []
    runnable = []
    for name in names:
        gatherer = registry[name]
        if gatherer.needs and not labels.get(gatherer.needs):
            notes.append(f"{name}: the alert names no {gatherer.needs}, so this was not looked at")
        else:
            runnable.append(gatherer)

    async def one(gatherer: Gatherer) -> None:
        results[gatherer.name] = await anyio.to_thread.run_sync(
            _run, gatherer, ctx, abandon_on_cancel=True, limiter=limiter
        )

    with anyio.move_on_after(budget + HAND_BACK):
        async with anyio.create_task_group() as tg:
            for gatherer in runnable:
                tg.start_soon(one, gatherer)
    facts: list[Fact] = []
    for gatherer in runnable:
        found = results.get(gatherer.name)
        if found is None:
            notes.append(f"{gatherer.name} did not finish within {budget:g} s")
            continue
        facts.extend(found.facts)
        notes.extend(found.notes)
    finished = time.monotonic()
    return Gathered(tuple(facts), tuple(notes), finished - started, finished)
