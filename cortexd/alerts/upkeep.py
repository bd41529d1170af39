"""The alert manager's background work: when to flush, prune, settle and expire.

Two loops run beside the manager: housekeeping (coalesced writes every
`FLUSH_INTERVAL`, retention hourly) and timers (flapping alerts that settle,
events that expire), which sleep until the next one is due or a change
wakes them. A full or read-only disk is logged once by the store and simply
retried on the next round.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from cortexd.store import StorageUnavailable

if TYPE_CHECKING:
    from cortexd.alerts.manager import AlertManager

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0
FLUSH_INTERVAL = 15.0
# The timer loop sleeps at most this long, so a changed setting or a stepped
# wall clock is seen soon.
MAX_TIMER_SLEEP = 5.0


class Upkeep:
    """The loops that keep one alert manager's rows and timers up to date."""

    def __init__(self, manager: AlertManager) -> None:
        self.manager = manager
        self.changed = anyio.Event()

    def wake(self) -> None:
        """A timer may be due sooner than the loop thinks (a new event, a flap)."""
        self.changed.set()

    async def housekeeping(self) -> None:
        last_prune = -PRUNE_INTERVAL
        while True:
            await anyio.sleep(FLUSH_INTERVAL)
            if not self.manager.running:
                continue
            try:
                await self.manager.flush(only_due=True)
                now = time.monotonic()
                if now - last_prune >= PRUNE_INTERVAL:
                    last_prune = now
                    await self.manager.prune()
            except StorageUnavailable:
                pass  # a full or read-only disk, logged by the store once; retried next round
            except Exception:  # isolation boundary: housekeeping retries next round
                log.exception("alerts housekeeping failed")

    async def timers(self) -> None:
        while True:
            self.changed = anyio.Event()
            try:
                due = await self.manager.run_timers()
            except StorageUnavailable:
                due = None  # a full or read-only disk, logged by the store once
            except Exception:  # isolation boundary: the next round tries again
                log.exception("alert timers failed")
                due = None
            wait = MAX_TIMER_SLEEP if due is None else due - self.manager.clock()
            with anyio.move_on_after(max(0.0, min(MAX_TIMER_SLEEP, wait))):
                await self.changed.wait()
