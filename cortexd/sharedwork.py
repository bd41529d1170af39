"""Work that any reader can make root do, done once and not too often.

Some read methods make the daemon (root) do real work: refresh apt's package
lists, plan a fix with `apt-get check`. A reader calling them in a loop, or
twelve at once, must not turn that into a stream of root processes.
`SharedWork` gives each piece of work a key and:

- runs it once at a time per key: a caller arriving while it runs waits for
  that run and gets its result (single flight);
- for callers who are `limited` (readers), runs it at most once per
  `min_interval`: within it they get the last result and its age instead.

Admins are not limited — they may need a fresh answer now — but they join a
run in progress like everyone else.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

V = TypeVar("V")
# Results kept for the rate limit: keys may come from callers (a fix's
# target), so the table is bounded, oldest out first.
MAX_KEPT = 64


@dataclass(frozen=True, slots=True)
class Outcome(Generic[V]):
    """A result and how it was come by: `ran` it, `joined` a run, or `cached` (with its age)."""

    value: V
    how: str
    age_seconds: float = 0.0


class _Run(Generic[V]):
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: V | None = None
        self.ok = False
        self.error: Exception | None = None


class SharedWork(Generic[V]):
    """Single flight per key, and a minimum interval per key for limited callers."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._running: dict[Hashable, _Run[V]] = {}
        self._last: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def last(self, key: Hashable) -> tuple[float, V] | None:
        """When the last run for `key` finished, and its result."""
        return self._last.get(key)

    async def run(
        self,
        key: Hashable,
        work: Callable[[], Awaitable[V]],
        *,
        limited: bool,
        min_interval: float,
    ) -> Outcome[V]:
        """The result of `work` for `key`: run now, joined, or cached (see the module).

        Raises whatever `work` raised, to the caller that ran it and to those
        that joined. On cancellation of the run, callers that joined start
        their own.
        """
        while True:
            running = self._running.get(key)
            if running is not None:
                await running.done.wait()
                if running.error is not None:
                    raise running.error
                if running.ok:
                    return Outcome(running.value, "joined")  # type: ignore[arg-type]
                continue  # the run was cancelled: try again
            kept = self._last.get(key)
            if limited and kept is not None and self.clock() - kept[0] < min_interval:
                return Outcome(kept[1], "cached", max(0.0, self.clock() - kept[0]))
            return await self._run(key, work)

    async def _run(self, key: Hashable, work: Callable[[], Awaitable[V]]) -> Outcome[V]:
        run: _Run[V] = _Run()
        self._running[key] = run
        try:
            value = await work()
            run.value, run.ok = value, True
        except Exception as exc:
            run.error = exc
            raise
        finally:
            del self._running[key]
            run.done.set()
        self._last[key] = (self.clock(), value)
        self._last.move_to_end(key)
        while len(self._last) > MAX_KEPT:
            self._last.popitem(last=False)
        return Outcome(value, "ran")
