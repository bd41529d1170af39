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
import sqlite3
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


LOCKED_WAIT = 5.0


def copy_database(source: str, target: str) -> None:
    """An online, consistent copy of `source` into a new file `target` (backup API)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=LOCKED_WAIT)
    try:
        # Python's backup loop retries a busy source forever; a read transaction
        # taken first fails within LOCKED_WAIT instead (a database another process
        # holds in exclusive locking mode) and keeps the source steady meanwhile.
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            # A single self-contained file: no WAL beside the copy.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def state_databases(state_dir: str) -> list[str]:
    """The SQLite files directly under `state_dir`."""
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return []
    return [
        os.path.join(state_dir, n)
        for n in names
        if n.endswith(".db") and os.path.isfile(os.path.join(state_dir, n))
    ]
