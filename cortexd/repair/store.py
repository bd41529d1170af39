"""The repair history and the healing log, in their own SQLite file (`repair.db`).

Every function takes an open connection and runs on the database thread.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from cortexd.store import Migration

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE fix_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fix_id TEXT NOT NULL,
            target TEXT,
            requested_by TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL,
            ok INTEGER NOT NULL,
            verified INTEGER,
            message TEXT NOT NULL,
            steps TEXT NOT NULL
        );
        CREATE INDEX fix_runs_started ON fix_runs(started_at);
        CREATE TABLE healing_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            unit TEXT NOT NULL,
            at REAL NOT NULL,
            action TEXT NOT NULL,
            result TEXT NOT NULL,
            duration_ms REAL NOT NULL,
            attempt INTEGER NOT NULL,
            message TEXT NOT NULL
        );
        CREATE INDEX healing_log_at ON healing_log(at);
        """,
    ),
)
KEEP_ROWS = 10_000


def add_fix_run(conn: sqlite3.Connection, row: dict[str, Any]) -> int:
    cur = conn.execute(
        "INSERT INTO fix_runs (fix_id, target, requested_by, started_at, finished_at, ok,"
        " verified, message, steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row["fix_id"],
            row["target"],
            row["requested_by"],
            row["started_at"],
            row["finished_at"],
            int(row["ok"]),
            None if row["verified"] is None else int(row["verified"]),
            row["message"],
            orjson.dumps(row["steps"]).decode(),
        ),
    )
    conn.execute(
        "DELETE FROM fix_runs WHERE id <= (SELECT MAX(id) FROM fix_runs) - ?", (KEEP_ROWS,)
    )
    return int(cur.lastrowid or 0)


def fix_runs(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, fix_id, target, requested_by, started_at, finished_at, ok, verified,"
        " message, steps FROM fix_runs ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        {
            "id": r[0],
            "fix_id": r[1],
            "target": r[2],
            "requested_by": r[3],
            "started_at": r[4],
            "finished_at": r[5],
            "ok": bool(r[6]),
            "verified": None if r[7] is None else bool(r[7]),
            "message": r[8],
            "steps": orjson.loads(r[9]),
        }
        for r in rows
    ]


def add_healing(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO healing_log (unit, at, action, result, duration_ms, attempt, message)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            row["unit"],
            row["at"],
            row["action"],
            row["result"],
            row["duration_ms"],
            row["attempt"],
            row["message"],
        ),
    )
    conn.execute(
        "DELETE FROM healing_log WHERE id <= (SELECT MAX(id) FROM healing_log) - ?", (KEEP_ROWS,)
    )


def healing_log(conn: sqlite3.Connection, unit: str | None, limit: int) -> list[dict[str, Any]]:
    sql = "SELECT unit, at, action, result, duration_ms, attempt, message FROM healing_log"
    args: tuple[Any, ...] = ()
    if unit:
        sql += " WHERE unit = ?"
        args = (unit,)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    keys = ("unit", "at", "action", "result", "duration_ms", "attempt", "message")
    return [dict(zip(keys, r, strict=True)) for r in rows]
