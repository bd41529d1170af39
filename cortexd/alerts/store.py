"""The alerts' own queries and schema, run through the store's executor.

Every function here takes an open `sqlite3.Connection` and runs on the
database thread (via `Database.run`/`read`); nothing here touches the loop.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from cortexd.alerts.model import Alert, ListFilter, Severity, Silence
from cortexd.store import Migration

MIGRATIONS = (
    Migration(
        1,
        """
        CREATE TABLE alerts (
            id TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            source TEXT NOT NULL,
            severity INTEGER NOT NULL,
            category TEXT NOT NULL,
            title TEXT NOT NULL,
            description TEXT NOT NULL,
            labels TEXT NOT NULL,
            annotations TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('firing', 'acknowledged', 'resolved')),
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            count INTEGER NOT NULL,
            host TEXT NOT NULL,
            acknowledged_at REAL,
            acknowledged_by TEXT,
            resolved_at REAL,
            cleared_at REAL
        );
        -- At most one open alert per condition: the database itself refuses a
        -- duplicate, even after a crash between two writes.
        CREATE UNIQUE INDEX alerts_open_fingerprint ON alerts(fingerprint)
            WHERE state != 'resolved';
        CREATE INDEX alerts_last_seen ON alerts(last_seen);
        CREATE INDEX alerts_state_last_seen ON alerts(state, last_seen);
        CREATE TABLE silences (
            id TEXT PRIMARY KEY,
            matchers TEXT NOT NULL,
            comment TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            starts_at REAL NOT NULL,
            ends_at REAL NOT NULL
        );
        CREATE TABLE kv (
            key TEXT PRIMARY KEY,
            value BLOB NOT NULL
        )
        """,
    ),
    Migration(
        2,
        """
        ALTER TABLE alerts ADD COLUMN key TEXT;
        ALTER TABLE alerts ADD COLUMN name TEXT NOT NULL DEFAULT '';
        ALTER TABLE alerts ADD COLUMN flapping INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE alerts ADD COLUMN changes TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE alerts ADD COLUMN expires_at REAL
        """,
    ),
)

_COLUMNS = (
    "id, fingerprint, source, severity, category, title, description, labels, annotations,"
    " state, first_seen, last_seen, count, host, acknowledged_at, acknowledged_by,"
    " resolved_at, cleared_at, key, name, flapping, changes, expires_at"
)
_COUNT = len(_COLUMNS.split(","))


def _row_values(alert: Alert) -> tuple[Any, ...]:
    return (
        alert.id,
        alert.fingerprint,
        alert.source,
        int(alert.severity),
        alert.category,
        alert.title,
        alert.description,
        orjson.dumps(alert.labels).decode(),
        orjson.dumps(alert.annotations).decode(),
        alert.state,
        alert.first_seen,
        alert.last_seen,
        alert.count,
        alert.host,
        alert.acknowledged_at,
        alert.acknowledged_by,
        alert.resolved_at,
        alert.cleared_at,
        alert.key,
        alert.name,
        int(alert.flapping),
        orjson.dumps(alert.changes).decode(),
        alert.expires_at,
    )


def _alert(row: sqlite3.Row) -> Alert:
    return Alert(
        id=row["id"],
        fingerprint=row["fingerprint"],
        source=row["source"],
        severity=Severity(row["severity"]),
        category=row["category"],
        title=row["title"],
        description=row["description"],
        labels=orjson.loads(row["labels"]),
        annotations=orjson.loads(row["annotations"]),
        state=row["state"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        count=row["count"],
        host=row["host"],
        acknowledged_at=row["acknowledged_at"],
        acknowledged_by=row["acknowledged_by"],
        resolved_at=row["resolved_at"],
        cleared_at=row["cleared_at"],
        key=row["key"],
        name=row["name"],
        flapping=bool(row["flapping"]),
        changes=orjson.loads(row["changes"]),
        expires_at=row["expires_at"],
        written_at=row["last_seen"],
    )


def save(conn: sqlite3.Connection, alerts: list[Alert]) -> None:
    """Insert or fully overwrite each alert's row."""
    placeholders = ", ".join("?" * _COUNT)
    conn.executemany(
        f"INSERT OR REPLACE INTO alerts ({_COLUMNS}) VALUES ({placeholders})",
        [_row_values(a) for a in alerts],
    )


def load_open(conn: sqlite3.Connection) -> list[Alert]:
    """Every alert whose condition is not resolved (cleared ones included)."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM alerts WHERE state != 'resolved'").fetchall()
    return [_alert(r) for r in rows]


def load_recently_resolved(conn: sqlite3.Connection, since: float) -> list[Alert]:
    """Resolved, uncleared alerts resolved after `since` or still flapping, oldest first.

    A later row of one fingerprint comes after an earlier one, so a caller
    keying them by fingerprint keeps the latest.
    """
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM alerts WHERE state = 'resolved' AND cleared_at IS NULL"
        " AND (resolved_at >= ? OR flapping = 1) ORDER BY resolved_at",
        (since,),
    ).fetchall()
    return [_alert(r) for r in rows]


def get(conn: sqlite3.Connection, alert_id: str) -> Alert | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    return _alert(row) if row else None


def select(conn: sqlite3.Connection, flt: ListFilter) -> list[Alert]:
    """Alerts matching `flt`, most recently seen first."""
    where: list[str] = []
    args: list[Any] = []
    if flt.severity is not None:
        where.append("severity = ?")
        args.append(int(flt.severity))
    if flt.states is not None:
        where.append(f"state IN ({', '.join('?' * len(flt.states))})")
        args.extend(flt.states)
    if flt.category is not None:
        where.append("category = ?")
        args.append(flt.category)
    if flt.since is not None:
        where.append("last_seen >= ?")
        args.append(flt.since)
    if not flt.include_cleared:
        where.append("cleared_at IS NULL")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM alerts {clause} ORDER BY last_seen DESC LIMIT ?",
        (*args, flt.limit),
    ).fetchall()
    return [_alert(r) for r in rows]


def clear_inactive(conn: sqlite3.Connection, now: float) -> list[str]:
    """Mark acknowledged and resolved alerts cleared; returns their ids."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM alerts WHERE cleared_at IS NULL"
            " AND state IN ('acknowledged', 'resolved')"
        )
    ]
    conn.execute(
        "UPDATE alerts SET cleared_at = ? WHERE cleared_at IS NULL"
        " AND state IN ('acknowledged', 'resolved')",
        (now,),
    )
    return ids


def prune(conn: sqlite3.Connection, older_than: float, keep: int, now: float) -> int:
    """Delete resolved alerts past retention, then the oldest beyond `keep`; expired silences."""
    deleted = conn.execute(
        "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?", (older_than,)
    ).rowcount
    deleted += conn.execute(
        "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE state = 'resolved'"
        " ORDER BY resolved_at DESC LIMIT -1 OFFSET ?)",
        (keep,),
    ).rowcount
    conn.execute("DELETE FROM silences WHERE ends_at < ?", (older_than,))
    return deleted


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT state, COUNT(*) FROM alerts GROUP BY state").fetchall()
    return {r[0]: r[1] for r in rows}


# -- silences ---------------------------------------------------------------


def _silence(row: sqlite3.Row) -> Silence:
    return Silence(
        id=row["id"],
        matchers=tuple(orjson.loads(row["matchers"])),
        comment=row["comment"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
    )


def save_silence(conn: sqlite3.Connection, silence: Silence) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO silences (id, matchers, comment, created_by, created_at,"
        " starts_at, ends_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            silence.id,
            orjson.dumps(list(silence.matchers)).decode(),
            silence.comment,
            silence.created_by,
            silence.created_at,
            silence.starts_at,
            silence.ends_at,
        ),
    )


def load_silences(conn: sqlite3.Connection) -> list[Silence]:
    rows = conn.execute("SELECT * FROM silences ORDER BY created_at").fetchall()
    return [_silence(r) for r in rows]


def delete_silence(conn: sqlite3.Connection, silence_id: str) -> bool:
    return conn.execute("DELETE FROM silences WHERE id = ?", (silence_id,)).rowcount > 0


# -- small key/value blobs (the last health snapshot) -------------------------


def put_blob(conn: sqlite3.Connection, key: str, value: bytes) -> None:
    conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))


def get_blob(conn: sqlite3.Connection, key: str) -> bytes | None:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return bytes(row[0]) if row else None
