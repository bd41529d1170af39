"""The SQLite executor: one connection, owned by one dedicated thread.

SQLite connections are not safe to share across threads, and every query
blocks, so the event loop never touches the connection: each call is a
function `fn(conn)` submitted to the connection's own thread and awaited with
a deadline. WAL mode lets a commit cost one append, and with
`synchronous=NORMAL` a committed transaction survives a process crash
(`kill -9`); only an OS crash can lose the last few commits.

The daemon is the only process that opens its databases, so each is held in
exclusive locking mode: WAL then keeps its index in the heap rather than in
a memory-mapped `-shm` file. A memory-mapped file on a full tmpfs raises
SIGBUS, which no error handling can catch; heap memory cannot (see
bench/storage.py for what the mode costs). Copies go through the owning
connection (`backup`), never through a second one.

At open, a file that is not a sound database of a schema this build knows
is moved aside (`cortexd.store.quarantine`) and a fresh one is created. A
file that cannot be opened at all leaves the database `failed`: every call
answers StoreFailed, the rest of the daemon serves. A call that fails on its
filesystem (full, read-only) answers StorageUnavailable and changes nothing;
the next call tries again, so writes resume by themselves once there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from cortexd.protocol import Timeout, Unavailable
from cortexd.store.errors import (
    Damaged,
    DatabaseLocked,
    StorageUnavailable,
    StoreFailed,
    is_damage,
    os_reason,
    translate,
)
from cortexd.store.quarantine import Quarantined, move_aside, preserve_side_files, release

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_DEADLINE = 10.0
# Below DEFAULT_DEADLINE, so a lock held elsewhere ends as DatabaseLocked
# rather than as a Timeout of the whole call.
BUSY_TIMEOUT_MS = 5000
QUICK_CHECK_LINES = 5


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step; `version` numbers are per database and strictly increasing."""

    version: int
    sql: str


class Database:
    """An SQLite file behind a single-thread executor.

    `open()` creates the file (mode 0600), checks it and applies pending
    migrations; `run(fn)` runs `fn(conn)` on the connection's thread inside a
    transaction (committed when `fn` returns, rolled back when it raises)
    and returns its result; `close()` checkpoints and closes. `quarantined`
    lists what `open()` moved aside; `failure` says why the file could not
    be opened (None once it is).
    """

    def __init__(self, path: str, migrations: Sequence[Migration] = ()) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self._migrations = sorted(migrations, key=lambda m: m.version)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._running: object | None = None
        self.quarantined: list[Quarantined] = []
        self.failure: str | None = None
        # The last storage fault of a call, until a write succeeds again.
        self.fault: str | None = None
        self.fault_since: float | None = None

    @property
    def known_version(self) -> int:
        """The newest schema version this build can migrate to."""
        return self._migrations[-1].version if self._migrations else 0

    # -- lifecycle -------------------------------------------------------

    async def open(self, deadline: float = DEFAULT_DEADLINE) -> None:
        """Open (or create) the file, check it and migrate it; idempotent.

        A damaged file is moved aside and replaced by a fresh one (logged,
        listed in `quarantined`).

        Raises:
            StoreFailed: the file cannot be opened or created (read-only
                directory, locked by another process, a damaged file that
                cannot be moved); `failure` keeps the reason and every later
                call raises the same.
        """
        if self._executor is not None and self._conn is not None:
            return  # already open: a second connection would find the file locked
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cortex-sqlite")
        self.failure = None
        try:
            await self._submit(self._open_sync, deadline)
        except StoreFailed as exc:
            self.failure = exc.reason
            log.error("%s", exc.message)
            raise

    def _open_sync(self) -> None:
        kept = preserve_side_files(self.path)
        try:
            self._open_or_replace(kept)
        finally:
            release(kept)

    def _open_or_replace(self, kept: dict[str, str]) -> None:
        try:
            self._conn = self._connect()
        except Damaged as exc:
            reason = str(exc)
            try:
                moved = move_aside(self.path, reason, kept)
            except OSError as err:
                raise StoreFailed(
                    self.name, f"damaged ({reason}) and cannot be moved aside: {os_reason(err)}"
                ) from None
            self.quarantined.append(moved)
            log.critical(
                "%s is damaged (%s): moved aside to %s; starting with a fresh database "
                "(restore a backup to get its contents back)",
                self.path,
                reason,
                moved.moved_to,
            )
            try:
                self._conn = self._connect()
            except Damaged as again:
                raise StoreFailed(self.name, f"a fresh database fails its check: {again}") from None

    def _connect(self) -> sqlite3.Connection:
        """A checked, migrated connection. Raises Damaged or StoreFailed."""
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, mode=0o750, exist_ok=True)
            # Open for writing first: SQLite would quietly fall back to a
            # read-only connection and fail only at the first write.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreFailed(self.name, os_reason(exc)) from None
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # Before the first read, or WAL would map its index from a -shm file.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA mmap_size=0")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Take the write lock now and keep it: no other process opens the
            # file while the daemon has it.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
            _check(conn, self.known_version)
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            if is_damage(exc):
                raise Damaged(str(exc)) from None
            mapped = translate(exc, self.path)
            reason = (
                mapped.reason
                if isinstance(mapped, StorageUnavailable | DatabaseLocked)
                else str(exc)
            )
            raise StoreFailed(self.name, reason) from None
        except BaseException:
            conn.close()
            raise
        return conn

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
                _rollback(conn)
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
        if self._conn is None:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            # A full or read-only disk: the WAL keeps the commits and the
            # next open replays it.
            log.warning("%s: closing without a checkpoint: %s", self.path, exc)
        finally:
            self._conn.close()
            self._conn = None

    def state(self) -> dict[str, Any]:
        """What `status` shows of this database: ok, degraded (calls failing) or failed."""
        if self.failure is not None:
            state = "failed"
        elif self.fault is not None:
            state = "degraded"
        else:
            state = "ok"
        out: dict[str, Any] = {"file": self.name, "state": state}
        if self.failure is not None:
            out["reason"] = self.failure
        elif self.fault is not None:
            out["reason"] = self.fault
            out["since"] = self.fault_since
        if self.quarantined:
            out["quarantined"] = [q.to_dict() for q in self.quarantined]
        return out

    def failure_reason(self) -> dict[str, str]:
        """`{"reason": ...}` for a component's `state()` while this database is failed."""
        return {} if self.failure is None else {"reason": f"{self.name}: {self.failure}"}

    # -- calls -----------------------------------------------------------

    async def run(
        self, fn: Callable[[sqlite3.Connection], T], deadline: float = DEFAULT_DEADLINE
    ) -> T:
        """Run `fn(conn)` in one transaction on the connection's thread.

        Raises:
            Timeout: `fn` ran past `deadline` seconds; the statement running
                then is interrupted and the transaction rolled back.
            StorageUnavailable: the filesystem refused (full, read-only);
                the transaction was rolled back.
            DatabaseLocked: another process held a lock past the busy timeout.
            StoreFailed: the database could not be opened.
            Unavailable: the database is not open (start-up or shutdown).

        On cancellation the waiting stops at once; a statement already
        running is interrupted the same way.
        """
        return await self._submit(
            lambda: self._guarded(self._transaction, fn, write=True), deadline
        )

    async def read(
        self, fn: Callable[[sqlite3.Connection], T], deadline: float = DEFAULT_DEADLINE
    ) -> T:
        """Like `run`, for queries that only read (no write lock taken)."""
        return await self._submit(
            lambda: self._guarded(lambda f: f(self._connection()), fn, write=False), deadline
        )

    async def backup(self, target: str, deadline: float = DEFAULT_DEADLINE) -> None:
        """Write a consistent copy of the database to the new file `target`.

        Through this connection (SQLite's backup API), between two calls: no
        second connection ever opens the file. The copy is one file in
        rollback-journal mode, with nothing beside it.
        """

        def copy(conn: sqlite3.Connection) -> None:
            dst = sqlite3.connect(target)
            try:
                conn.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()

        # Not through _guarded: a failure writing `target` says nothing
        # about this database's own storage.
        await self._submit(lambda: copy(self._connection()), deadline)

    def _connection(self) -> sqlite3.Connection:
        if self.failure is not None:
            raise StoreFailed(self.name, self.failure)
        if self._conn is None:
            raise Unavailable(f"database {self.path} is not open")
        return self._conn

    def _guarded(
        self,
        call: Callable[[Callable[[sqlite3.Connection], T]], T],
        fn: Callable[[sqlite3.Connection], T],
        *,
        write: bool,
    ) -> T:
        """Run on the database thread: name storage failures, track faults."""
        try:
            result = call(fn)
        except sqlite3.Error as exc:
            mapped = translate(exc, self.path)
            if mapped is None:
                raise
            if isinstance(mapped, StorageUnavailable):
                self._note_fault(mapped.reason)
            raise mapped from exc
        if write and self.fault is not None:
            log.info("%s: writes work again (after %s)", self.path, self.fault)
            self.fault = self.fault_since = None
        return result

    def _note_fault(self, reason: str) -> None:
        if self.fault != reason:
            log.error("%s: %s; writes fail until that changes", self.path, reason)
            self.fault = reason
            self.fault_since = time.time()

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed may leave the transaction open (SQLITE_BUSY).
            _rollback(conn)
            raise
        return result

    async def _submit(self, fn: Callable[[], T], deadline: float) -> T:
        if self._executor is None:
            if self.failure is not None:
                raise StoreFailed(self.name, self.failure)
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


def _check(conn: sqlite3.Connection, known: int) -> None:
    """Raise Damaged unless `quick_check` passes and the schema is not newer than `known`."""
    lines = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchmany(QUICK_CHECK_LINES)]
    if lines != ["ok"]:
        raise Damaged("quick_check: " + "; ".join(lines))
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > known:
        raise Damaged(f"schema version {version} is newer than this build knows ({known})")


def _rollback(conn: sqlite3.Connection) -> None:
    # The error that made us roll back is the one to report, not a second
    # one from the rollback itself on a failing disk.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (migrations hold no triggers)."""
    return [s.strip() for s in script.split(";") if s.strip()]
