"""The outbox's schema and queries (the seed's queue semantics), run on the DB thread.

An entry is written `pending` before anything is attempted; a worker claims
it (`processing`), then marks it `completed`, or back to `pending` with a
later `next_attempt_at`, or `failed` — and a failed entry is copied to
`dead_letter` in the same transaction, so it is never in neither place.
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
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            action TEXT NOT NULL,
            kind TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (
                status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')
            ),
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            last_error TEXT,
            answer TEXT,
            created_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            claimed_at REAL,
            completed_at REAL
        );
        CREATE INDEX outbox_pending ON outbox(next_attempt_at) WHERE status = 'pending';
        CREATE INDEX outbox_created ON outbox(created_at);
        CREATE TABLE dead_letter (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            original_id INTEGER NOT NULL,
            action TEXT NOT NULL,
            kind TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            payload TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT,
            created_at REAL NOT NULL,
            failed_at REAL NOT NULL
        );
        CREATE INDEX dead_letter_action ON dead_letter(action, failed_at DESC);
        CREATE TABLE suppressed (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fingerprint TEXT NOT NULL,
            kind TEXT NOT NULL,
            reason TEXT NOT NULL,
            title TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX suppressed_at ON suppressed(at);
        CREATE TABLE kv (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
    ),
)

# Due entries looked at per free slot, so capped actions do not hide others.
CLAIM_LOOKAHEAD = 8
_ENTRY = (
    "id, action, kind, fingerprint, payload, status, attempts, max_attempts, last_error,"
    " answer, created_at, next_attempt_at, claimed_at, completed_at"
)
_DEAD = (
    "id, original_id, action, kind, fingerprint, payload, attempts, last_error, created_at,"
    " failed_at"
)


def entry_dict(row: sqlite3.Row, *, with_payload: bool = True) -> dict[str, Any]:
    out = {k: row[k] for k in row.keys() if k != "payload"}  # noqa: SIM118 (Row has no __iter__ of keys)
    if with_payload:
        out["event"] = orjson.loads(row["payload"])
    return out


def enqueue(
    conn: sqlite3.Connection,
    items: list[tuple[str, str, str, dict[str, Any]]],
    max_attempts: int,
    now: float,
) -> list[int]:
    """Insert (action, kind, fingerprint, event) entries as pending; returns their ids."""
    ids = []
    for action, kind, fp, event in items:
        cur = conn.execute(
            "INSERT INTO outbox (action, kind, fingerprint, payload, max_attempts, created_at,"
            " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (action, kind, fp, orjson.dumps(event).decode(), max_attempts, now, now),
        )
        ids.append(int(cur.lastrowid or 0))
    return ids


def count_open(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'processing')"
    ).fetchone()
    return int(row[0])


def requeue_interrupted(conn: sqlite3.Connection) -> int:
    """Entries a crash left `processing` go back to `pending` (at-least-once)."""
    cur = conn.execute(
        "UPDATE outbox SET status = 'pending', claimed_at = NULL WHERE status = 'processing'"
    )
    return cur.rowcount


def claim_due(
    conn: sqlite3.Connection, now: float, limit: int, busy: dict[str, int], per_action: int
) -> tuple[list[sqlite3.Row], bool]:
    """Mark up to `limit` due pending entries `processing` and return them.

    An action with `per_action` entries in flight (`busy` counts them) gets
    no more, so one hanging endpoint cannot take every slot. The flag says
    whether a due entry was left for that reason.
    """
    rows = conn.execute(
        f"SELECT {_ENTRY} FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at, id LIMIT ?",
        (now, limit * CLAIM_LOOKAHEAD),
    ).fetchall()
    taken = dict(busy)
    chosen: list[sqlite3.Row] = []
    skipped = False
    for row in rows:
        if len(chosen) == limit:
            break
        if taken.get(row["action"], 0) >= per_action:
            skipped = True
            continue
        taken[row["action"]] = taken.get(row["action"], 0) + 1
        chosen.append(row)
    conn.executemany(
        "UPDATE outbox SET status = 'processing', claimed_at = ? WHERE id = ?",
        [(now, r["id"]) for r in chosen],
    )
    return chosen, skipped


def next_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'")
    value = row.fetchone()[0]
    return float(value) if value is not None else None


def complete(conn: sqlite3.Connection, entry_id: int, answer: str, now: float) -> None:
    conn.execute(
        "UPDATE outbox SET status = 'completed', attempts = attempts + 1, answer = ?,"
        " completed_at = ?, last_error = NULL WHERE id = ?",
        (answer, now, entry_id),
    )


def fail(
    conn: sqlite3.Connection, entry_id: int, error: str, now: float, retry_at: float | None
) -> bool:
    """Record a failed attempt; retry at `retry_at`, or dead-letter when attempts are spent.

    Returns True when the entry moved to the dead-letter table.
    """
    row = conn.execute(f"SELECT {_ENTRY} FROM outbox WHERE id = ?", (entry_id,)).fetchone()
    if row is None:
        return False
    attempts = int(row["attempts"]) + 1
    if retry_at is not None and attempts < int(row["max_attempts"]):
        conn.execute(
            "UPDATE outbox SET status = 'pending', attempts = ?, last_error = ?,"
            " next_attempt_at = ?, claimed_at = NULL WHERE id = ?",
            (attempts, error, retry_at, entry_id),
        )
        return False
    conn.execute(
        "UPDATE outbox SET status = 'failed', attempts = ?, last_error = ?, completed_at = ?"
        " WHERE id = ?",
        (attempts, error, now, entry_id),
    )
    conn.execute(
        "INSERT INTO dead_letter (original_id, action, kind, fingerprint, payload, attempts,"
        " last_error, created_at, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry_id,
            row["action"],
            row["kind"],
            row["fingerprint"],
            row["payload"],
            attempts,
            error,
            row["created_at"],
            now,
        ),
    )
    return True


def history(
    conn: sqlite3.Connection, since: float, action: str | None, limit: int
) -> list[sqlite3.Row]:
    query = f"SELECT {_ENTRY} FROM outbox WHERE created_at >= ?"
    args: list[Any] = [since]
    if action is not None:
        query += " AND action = ?"
        args.append(action)
    return conn.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()


def suppressed_since(conn: sqlite3.Connection, since: float, limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT id, fingerprint, kind, reason, title, at FROM suppressed WHERE at >= ?"
        " ORDER BY id DESC LIMIT ?",
        (since, limit),
    ).fetchall()


def record_suppressed(
    conn: sqlite3.Connection, items: list[tuple[str, str, str, str]], now: float
) -> None:
    """(fingerprint, kind, reason, title) of notifications held back, for history."""
    conn.executemany(
        "INSERT INTO suppressed (fingerprint, kind, reason, title, at) VALUES (?, ?, ?, ?, ?)",
        [(*item, now) for item in items],
    )


def dead_letters(
    conn: sqlite3.Connection, action: str | None, since: float | None, limit: int
) -> list[sqlite3.Row]:
    query = f"SELECT {_DEAD} FROM dead_letter WHERE 1 = 1"
    args: list[Any] = []
    if action is not None:
        query += " AND action = ?"
        args.append(action)
    if since is not None:
        query += " AND failed_at >= ?"
        args.append(since)
    return conn.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()


def dead_letter(conn: sqlite3.Connection, dead_id: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {_DEAD} FROM dead_letter WHERE id = ?", (dead_id,)
    ).fetchone()
    return row


def retry_dead(
    conn: sqlite3.Connection, rows: list[sqlite3.Row], max_attempts: int, now: float
) -> list[int]:
    """Move dead letters back into the outbox as new pending entries; returns new ids."""
    ids = []
    for row in rows:
        cur = conn.execute(
            "INSERT INTO outbox (action, kind, fingerprint, payload, max_attempts, created_at,"
            " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row["action"],
                row["kind"],
                row["fingerprint"],
                row["payload"],
                max_attempts,
                now,
                now,
            ),
        )
        conn.execute("DELETE FROM dead_letter WHERE id = ?", (row["id"],))
        ids.append(int(cur.lastrowid or 0))
    return ids


def purge_dead(conn: sqlite3.Connection, older_than: float) -> int:
    return conn.execute("DELETE FROM dead_letter WHERE failed_at < ?", (older_than,)).rowcount


def prune(conn: sqlite3.Connection, history_before: float) -> int:
    """Drop finished outbox rows and suppression records older than `history_before`."""
    done = conn.execute(
        "DELETE FROM outbox WHERE status IN ('completed', 'failed', 'cancelled')"
        " AND created_at < ?",
        (history_before,),
    ).rowcount
    done += conn.execute("DELETE FROM suppressed WHERE at < ?", (history_before,)).rowcount
    return done


def get_kv(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row else None


def put_kv(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO kv (key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def counts_since(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """Outbox outcomes since `since`, for the daily summary."""
    rows = conn.execute(
        "SELECT status, COUNT(*) FROM outbox WHERE created_at >= ? AND kind != 'summary'"
        " GROUP BY status",
        (since,),
    ).fetchall()
    out = {str(r[0]): int(r[1]) for r in rows}
    out["suppressed"] = int(
        conn.execute("SELECT COUNT(*) FROM suppressed WHERE at >= ?", (since,)).fetchone()[0]
    )
    return out
