"""The executor on bad files: damaged ones are moved aside, locked or unwritable ones fail.

Real SQLite files, a real second process holding a lock; nothing mocked.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortexd.protocol import ErrorCode
from cortexd.store import Database, Migration, StoreFailed, find_quarantined
from cortexd.store.db import BUSY_TIMEOUT_MS

MIGRATIONS = (
    Migration(1, "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"),
    Migration(2, "CREATE INDEX t_v ON t(v)"),
)
STAMPED = re.compile(r"^x\.db\.corrupt-\d{8}T\d{6}Z$")
GARBAGE = b"this is not an SQLite database, just bytes where one should be\n" * 64


def make_db(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 300,)] * rows)
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()


def content(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def listing(directory: Path) -> list[str]:
    return os.listdir(directory)


def truncate_to_half(path: Path) -> int:
    """Cut `path` to half its size; returns the new size."""
    size = path.stat().st_size // 2
    os.truncate(path, size)
    return size


async def fresh_and_working(db: Database) -> None:
    await db.run(lambda c: c.execute("INSERT INTO t (v) VALUES ('new')"))
    rows = await db.read(lambda c: c.execute("SELECT v FROM t").fetchall())
    version = await db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    assert [r[0] for r in rows] == ["new"]
    assert version == 2


async def test_garbage_is_moved_aside_with_its_wal_and_shm(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(GARBAGE)
    (tmp_path / "x.db-wal").write_bytes(b"wal bytes")
    (tmp_path / "x.db-shm").write_bytes(b"shm bytes")
    db = Database(str(path), MIGRATIONS)
    await db.open()
    try:
        await fresh_and_working(db)
        [moved] = db.quarantined
        assert "not a database" in moved.reason
        assert moved.original == str(path)
        name = os.path.basename(moved.moved_to)
        assert STAMPED.match(name), name
        # Nothing is lost: the file and its side files are where the name says.
        assert content(moved.moved_to) == GARBAGE
        assert content(f"{moved.moved_to}-wal") == b"wal bytes"
        assert content(f"{moved.moved_to}-shm") == b"shm bytes"
        # Nothing else is left behind (the links that kept the log are gone).
        assert set(listing(tmp_path)) <= {"x.db", "x.db-wal", name, f"{name}-wal", f"{name}-shm"}
        assert find_quarantined(str(tmp_path)) == [("x.db", name)]
        assert db.state()["quarantined"][0]["moved_to"] == moved.moved_to
        assert db.state()["state"] == "ok"
    finally:
        await db.close()


async def test_a_truncated_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    make_db(path, rows=500)
    size = truncate_to_half(path)
    db = Database(str(path), MIGRATIONS)
    await db.open()
    try:
        [moved] = db.quarantined
        assert len(content(moved.moved_to)) == size
        await fresh_and_working(db)
    finally:
        await db.close()


async def test_a_schema_newer_than_this_build_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    make_db(path, rows=3)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=7")
    conn.close()
    db = Database(str(path), MIGRATIONS)
    await db.open()
    try:
        [moved] = db.quarantined
        assert moved.reason == "schema version 7 is newer than this build knows (2)"
        await fresh_and_working(db)
    finally:
        await db.close()


async def test_a_sound_database_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    make_db(path, rows=3)
    db = Database(str(path), MIGRATIONS)
    await db.open()
    try:
        assert db.quarantined == []
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 3
        assert find_quarantined(str(tmp_path)) == []
    finally:
        await db.close()


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """x.db with another process holding an exclusive lock on it until the test ends."""
    path = tmp_path / "x.db"
    make_db(path, rows=3)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == b"locked\n"
    try:
        yield path
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()


async def test_a_database_locked_elsewhere_fails_clearly_and_is_not_moved(
    held_lock: Path,
) -> None:
    before = content(held_lock)
    db = Database(str(held_lock), MIGRATIONS)
    started = time.monotonic()
    with pytest.raises(StoreFailed) as caught:
        await db.open()
    waited = time.monotonic() - started
    # The busy timeout, not the call's deadline or forever.
    assert waited < BUSY_TIMEOUT_MS / 1000 + 3
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert caught.value.message == "x.db is unavailable: locked by another process"
    assert db.quarantined == []
    assert content(held_lock) == before
    assert db.state() == {"file": "x.db", "state": "failed", "reason": "locked by another process"}
    # Later calls answer at once with the same reason.
    started = time.monotonic()
    with pytest.raises(StoreFailed, match="locked by another process"):
        await db.read(lambda c: c.execute("SELECT 1").fetchone())
    assert time.monotonic() - started < 1
    await db.close()


async def test_a_path_that_cannot_be_a_database_file_fails_without_moving_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "x.db").mkdir()
    db = Database(str(tmp_path / "x.db"), MIGRATIONS)
    with pytest.raises(StoreFailed, match=r"x\.db is unavailable: Is a directory"):
        await db.open()
    assert (tmp_path / "x.db").is_dir()
    assert db.quarantined == []
    await db.close()


async def test_no_other_connection_opens_a_database_the_daemon_holds(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = Database(str(path), MIGRATIONS)
    await db.open()
    try:
        await db.run(lambda c: c.execute("INSERT INTO t (v) VALUES ('a')"))
        # Exclusive locking: WAL keeps its index in memory, no -shm file is mapped.
        assert not (tmp_path / "x.db-shm").exists()
        other = sqlite3.connect(path, timeout=0.2)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("SELECT count(*) FROM t").fetchone()
        finally:
            other.close()
        # A copy goes through the daemon's own connection instead.
        copy = tmp_path / "copy.db"
        await db.backup(str(copy))
    finally:
        await db.close()
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("SELECT v FROM t").fetchall() == [("a",)]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()
