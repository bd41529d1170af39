"""The SQLite executor on a real file: migrations, WAL, transactions, deadlines."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from cortexd.protocol import Timeout, Unavailable
from cortexd.store import Database, Migration

MIGRATIONS = (
    Migration(1, "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)"),
    Migration(2, "ALTER TABLE t ADD COLUMN note TEXT; CREATE INDEX t_v ON t(v)"),
)


async def test_migrates_once_in_wal_mode_with_private_file(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "x.db")
    db = Database(path, MIGRATIONS)
    await db.open()
    await db.run(lambda c: c.execute("INSERT INTO t VALUES ('a', 1, 'n')"))
    mode = await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    await db.close()
    assert mode == "wal"
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = Database(path, MIGRATIONS)
    await again.open()
    version = await again.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    rows = await again.read(lambda c: c.execute("SELECT k, v, note FROM t").fetchall())
    await again.close()
    assert version == 2
    assert [tuple(r) for r in rows] == [("a", 1, "n")]


async def test_a_failing_call_rolls_back_and_the_next_one_works(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "x.db"), MIGRATIONS)
    await db.open()

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k, v) VALUES ('a', 1)")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await db.run(half_then_fail)
    await db.run(lambda c: c.execute("INSERT INTO t (k, v) VALUES ('b', 2)"))
    keys = await db.read(lambda c: [r[0] for r in c.execute("SELECT k FROM t")])
    await db.close()
    assert keys == ["b"]


async def test_a_statement_past_its_deadline_is_interrupted(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "x.db"), MIGRATIONS)
    await db.open()
    endless = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with pytest.raises(Timeout):
        await db.read(lambda c: c.execute(endless).fetchone(), deadline=0.2)
    # The connection is usable again once the interrupted statement gave up.
    assert await db.read(lambda c: c.execute("SELECT 41 + 1").fetchone()[0]) == 42
    await db.close()


async def test_calls_before_open_fail_clearly(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "x.db"), MIGRATIONS)
    with pytest.raises(Unavailable, match="not open"):
        await db.read(lambda c: None)
