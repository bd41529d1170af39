"""Modules imported when they are first needed, off the event loop.

Code that runs only on demand (an explanation, a backup, a restore, a
rollback) is not imported at start-up: the idle daemon would carry it in
memory for nothing. Its first use imports it in a worker thread, so the
loop never waits on the import; later uses find it imported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable

import anyio


def _ready(name: str) -> bool:
    module = sys.modules.get(name)
    # Present but still running its body in another thread: not ready yet.
    return module is not None and not getattr(module.__spec__, "_initializing", False)


def import_all(names: Iterable[str]) -> None:
    """Import every module in `names` (blocking)."""
    for name in names:
        importlib.import_module(name)


async def imported(*names: str) -> None:
    """Return once every module in `names` is imported, importing the missing ones
    in a worker thread."""
    if not all(_ready(name) for name in names):
        await anyio.to_thread.run_sync(import_all, names)
