"""Copies of the daemon's databases, made through the connections it holds.

Each database is held in exclusive locking mode, so a second connection
(even a read-only one in the same process) cannot open it while the daemon
runs. Backups and update snapshots copy in a worker thread; this gives them
a blocking `copy(source, target)` that hands each copy of a database the
daemon holds to that database's own thread (SQLite's backup API), and
leaves any other file to `fallback`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable

import anyio.from_thread

from cortexd.store.db import Database

# A copy holds the database's thread for its length (other calls wait their
# own deadlines); a few MB take milliseconds, this bounds a pathological one.
COPY_DEADLINE = 300.0


def copier(
    databases: Iterable[Database], fallback: Callable[[str, str], None]
) -> Callable[[str, str], None]:
    """A blocking `copy(source, target)` for an anyio worker thread (see the module doc)."""
    owners = {os.path.realpath(db.path): db for db in databases}

    def copy(source: str, target: str) -> None:
        db = owners.get(os.path.realpath(source))
        if db is None or db.failure is not None:
            fallback(source, target)
        else:
            anyio.from_thread.run(functools.partial(db.backup, target, deadline=COPY_DEADLINE))

    return copy
