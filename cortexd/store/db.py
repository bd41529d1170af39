"""The SQLite executor: one connection, owned by one dedicated thread.

SQLite connections are not safe to share across threads, and every query
blocks, so the event loop never touches the connection: each call is a
function `fn(conn)` submitted to the connection's own thread and awaited with
a deadline. WAL mode lets readers proceed while a writer commits, and with
`synchronous=NORMAL` a committed transaction survives a process crash
(`kill -9`); only an OS crash can lose the last few commits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from cortexd.protocol import Timeout, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_DEADLINE = 10.0
BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step; `version` numbers are per database and strictly increasing."""

    version: int
    sql: str


class Database:
    """An SQLite file behind a single-thread executor.

    `open()` creates the file (mode 0600) and applies pending migrations;
    `run(fn)` runs `fn(conn)` on the connection's thread inside a transaction
    (committed when `fn` returns, rolled back when it raises) and returns its
    result; `close()` checkpoints and closes.
    """

    def __init__(self, path: str, migrations: Sequence[Migration] = ()) -> None:
        self.path = path
        self._migrations = sorted(migrations, key=lambda m: m.version)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._running: object | None = None

    # -- lifecycle -------------------------------------------------------

    async def open(self, deadline: float = DEFAULT_DEADLINE) -> None:
        """Open the file and migrate it. Raises sqlite3.Error or OSError on failure."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cortex-sqlite")
        await self._submit(self._open_sync, deadline)

    def _open_sync(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for migration in self._migrations:
            if migration.version <= current:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={int(migration.version)}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("%s: migrated to schema version %d", self.path, migration.version)

    async def close(self, deadline: float = DEFAULT_DEADLINE) -> None:
        """Checkpoint the WAL into the main file and close; idempotent."""
        if self._executor is None:
            return
        try:
            await self._submit(self._close_sync, deadline)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()
                self._conn = None

    # -- calls -----------------------------------------------------------

    async def run(
        self, fn: Callable[[sqlite3.Connection], T], deadline: float = DEFAULT_DEADLINE
    ) -> T:
        """Run `fn(conn)` in one transaction on the connection's thread.

        Raises:
            Timeout: `fn` ran past `deadline` seconds; the statement running
                then is interrupted and the transaction rolled back.
            Unavailable: the database is not open (start-up or shutdown).

        On cancellation the waiting stops at once; a statement already
        running is interrupted the same way.
        """
        return await self._submit(lambda: self._transaction(fn), deadline)

    async def read(
        self, fn: Callable[[sqlite3.Connection], T], deadline: float = DEFAULT_DEADLINE
    ) -> T:
        """Like `run`, for queries that only read (no write lock taken)."""
        return await self._submit(lambda: fn(self._connection()), deadline)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable(f"database {self.path} is not open")
        return self._conn

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _submit(self, fn: Callable[[], T], deadline: float) -> T:
        if self._executor is None:
            raise Unavailable(f"database {self.path} is not open")
        token = object()

        def job() -> T:
            self._running = token
            try:
                return fn()
            finally:
                self._running = None

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, job)
        # A caller that stopped waiting (timeout, cancellation) never reads the
        # outcome; fetch it here so a late failure is not reported as lost.
        future.add_done_callback(_retrieve)
        try:
            with anyio.fail_after(deadline):
                # Shielded: a cancelled caller stops waiting, but the job still
                # runs to its commit or rollback rather than half-way.
                return await asyncio.shield(future)
        except TimeoutError:
            self._interrupt(token)
            raise Timeout(deadline) from None

    def _interrupt(self, token: object) -> None:
        # sqlite3.Connection.interrupt is the one call documented as safe from
        # another thread; only our own job is interrupted, never a later one.
        if self._conn is not None and self._running is token:
            self._conn.interrupt()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (migrations hold no triggers)."""
    return [s.strip() for s in script.split(";") if s.strip()]
