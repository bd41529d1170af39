"""The notifier's database: outbox, delivery state, dead letters, held-back records.

An outbox entry is written `pending` before anything is attempted, in the
same transaction as the delivery state it announces; a worker claims it
(`processing`), then marks it `completed`, or back to `pending` with a later
`next_attempt_at`, or `failed` — and a failed entry is copied to
`dead_letter` in the same transaction, so it is never in neither place.
Entries about one alert for one action are claimed one at a time, oldest
first, so a receiver gets them in the order they were made.

The SQL functions run on the database thread; `NotifyStore` is the
notifier's asynchronous face of them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import orjson

from cortexd.notify.model import Delivery
from cortexd.notify.schema import MIGRATIONS
from cortexd.store import Database

__all__ = ["MIGRATIONS", "Message", "NotifyStore", "entry_dict"]

# Due entries looked at per free slot, so capped actions do not hide others.
CLAIM_LOOKAHEAD = 8
_ENTRY = (
    "id, action, kind, fingerprint, payload, status, attempts, max_attempts, last_error,"
    " answer, body, created_at, next_attempt_at, claimed_at, completed_at"
)
_DEAD = (
    "id, original_id, action, kind, fingerprint, payload, attempts, last_error, body,"
    " created_at, failed_at"
)
Message = tuple[str, str, str, dict[str, Any]]
"""(action name, kind, fingerprint, event) of one entry to queue."""


def entry_dict(
    row: sqlite3.Row, *, with_payload: bool = True, with_body: bool = True
) -> dict[str, Any]:
    """A row as JSON: the event decoded; the remote `body` only `with_body`, else its size."""
    out = {k: row[k] for k in row.keys() if k not in ("payload", "body")}  # noqa: SIM118 (Row has no __iter__ of keys)
    body = row["body"] or ""
    out["body_chars"] = len(body)
    if with_body:
        out["body"] = body
    if with_payload:
        out["event"] = orjson.loads(row["payload"])
    return out


# -- the outbox ---------------------------------------------------------------


def enqueue(
    conn: sqlite3.Connection, items: Iterable[Message], max_attempts: int, now: float
) -> list[int]:
    """Insert entries as pending; returns their ids."""
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

    Only the oldest open entry about one alert for one action is ever taken,
    and none while another about it is in flight: what a receiver is told
    about an alert arrives in the order it was queued. An action with
    `per_action` entries in flight (`busy` counts them) gets no more, so one
    hanging endpoint cannot take every slot; the flag says whether a due
    entry was left for that reason.
    """
    rows = conn.execute(
        f"SELECT {_ENTRY} FROM outbox AS o WHERE status = 'pending' AND next_attempt_at <= ?"
        " AND NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.action = o.action"
        " AND p.fingerprint = o.fingerprint AND p.id < o.id"
        " AND p.status IN ('pending', 'processing'))"
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


def complete(conn: sqlite3.Connection, entry_id: int, answer: str, body: str, now: float) -> None:
    conn.execute(
        "UPDATE outbox SET status = 'completed', attempts = attempts + 1, answer = ?, body = ?,"
        " completed_at = ?, last_error = NULL WHERE id = ?",
        (answer, body, now, entry_id),
    )


def fail(
    conn: sqlite3.Connection,
    entry_id: int,
    error: str,
    body: str,
    now: float,
    retry_at: float | None,
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
            "UPDATE outbox SET status = 'pending', attempts = ?, last_error = ?, body = ?,"
            " next_attempt_at = ?, claimed_at = NULL WHERE id = ?",
            (attempts, error, body, retry_at, entry_id),
        )
        return False
    conn.execute(
        "UPDATE outbox SET status = 'failed', attempts = ?, last_error = ?, body = ?,"
        " completed_at = ? WHERE id = ?",
        (attempts, error, body, now, entry_id),
    )
    conn.execute(
        "INSERT INTO dead_letter (original_id, action, kind, fingerprint, payload, attempts,"
        " last_error, body, created_at, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry_id,
            row["action"],
            row["kind"],
            row["fingerprint"],
            row["payload"],
            attempts,
            error,
            body,
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


def last_events(conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> dict[Any, Any]:
    """The event of the latest entry for each (action, fingerprint) of `keys`."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for action, fp in keys:
        row = conn.execute(
            "SELECT o.payload FROM delivery AS d JOIN outbox AS o ON o.id = d.last_id"
            " WHERE d.action = ? AND d.fingerprint = ?",
            (action, fp),
        ).fetchone()
        if row is not None:
            out[(action, fp)] = orjson.loads(row[0])
    return out


# -- delivery state -------------------------------------------------------------


def save_deliveries(conn: sqlite3.Connection, deliveries: Iterable[Delivery]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO delivery (fingerprint, action, alert_id, kind, severity,"
        " labels, queued_at, fired_at, last_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                d.fingerprint,
                d.action,
                d.alert_id,
                d.kind,
                d.severity,
                orjson.dumps(d.labels).decode(),
                d.queued_at,
                d.fired_at,
                d.last_id,
            )
            for d in deliveries
        ],
    )


def load_deliveries(conn: sqlite3.Connection) -> list[Delivery]:
    rows = conn.execute(
        "SELECT fingerprint, action, alert_id, kind, severity, labels, queued_at, fired_at,"
        " last_id FROM delivery"
    ).fetchall()
    return [
        Delivery(
            fingerprint=r["fingerprint"],
            action=r["action"],
            alert_id=r["alert_id"],
            kind=r["kind"],
            severity=r["severity"],
            labels=orjson.loads(r["labels"]),
            queued_at=r["queued_at"],
            fired_at=r["fired_at"],
            last_id=r["last_id"],
        )
        for r in rows
    ]


def delete_deliveries(conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> None:
    """Forget the delivery state of these (fingerprint, action) pairs."""
    conn.executemany("DELETE FROM delivery WHERE fingerprint = ? AND action = ?", list(keys))


# -- held back ------------------------------------------------------------------


def suppressed_since(conn: sqlite3.Connection, since: float, limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT id, fingerprint, kind, reason, title, at FROM suppressed WHERE at >= ?"
        " ORDER BY id DESC LIMIT ?",
        (since, limit),
    ).fetchall()


def record_suppressed(
    conn: sqlite3.Connection, items: Iterable[tuple[str, str, str, str]], now: float
) -> None:
    """(fingerprint, kind, reason, title) of notifications held back, for history."""
    conn.executemany(
        "INSERT INTO suppressed (fingerprint, kind, reason, title, at) VALUES (?, ?, ?, ?, ?)",
        [(*item, now) for item in items],
    )


# -- dead letters -----------------------------------------------------------------


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
) -> tuple[list[int], list[int]]:
    """Move dead letters back into the outbox as new pending entries.

    A dead letter about an alert that a later entry for the same action has
    superseded is deleted instead of sent: it would tell the receiver a state
    the alert has left. Returns (new outbox ids, ids of superseded letters).
    """
    ids: list[int] = []
    superseded: list[int] = []
    for row in rows:
        newer = conn.execute(
            "SELECT 1 FROM delivery WHERE action = ? AND fingerprint = ? AND last_id > ?",
            (row["action"], row["fingerprint"], row["original_id"]),
        ).fetchone()
        conn.execute("DELETE FROM dead_letter WHERE id = ?", (row["id"],))
        if newer is not None and row["kind"] in ("firing", "flapping", "resolved"):
            superseded.append(int(row["id"]))
            continue
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
        ids.append(int(cur.lastrowid or 0))
    return ids, superseded


def purge_dead(conn: sqlite3.Connection, older_than: float) -> int:
    return conn.execute("DELETE FROM dead_letter WHERE failed_at < ?", (older_than,)).rowcount


def prune(conn: sqlite3.Connection, history_before: float) -> int:
    """Drop finished outbox rows and suppression records older than `history_before`.

    The latest entry about each alert for each action is kept whatever its
    age: it is what that receiver was last told.
    """
    done = conn.execute(
        "DELETE FROM outbox WHERE status IN ('completed', 'failed', 'cancelled')"
        " AND created_at < ? AND id NOT IN (SELECT last_id FROM delivery)",
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


class NotifyStore:
    """`notify.db` for the notifier and its methods: each method one transaction or read.

    Every method raises what `Database.run`/`read` raise (Unavailable when the
    database is not open, Timeout, sqlite3.Error).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def requeue_interrupted(self) -> int:
        return await self.db.run(requeue_interrupted)

    async def count_open(self) -> int:
        return await self.db.read(count_open)

    async def load_deliveries(self) -> list[Delivery]:
        return await self.db.read(load_deliveries)

    async def last_events(self, keys: list[tuple[str, str]]) -> dict[Any, Any]:
        return await self.db.read(lambda c: last_events(c, keys))

    async def commit(
        self,
        messages: list[Message],
        deliveries: list[Delivery],
        held: list[tuple[str, str, str, str]],
        *,
        max_attempts: int,
        now: float,
    ) -> list[int]:
        """Queue `messages` and write `deliveries` and `held` records, all or nothing.

        Each delivery records the id of the entry queued for it. Returns the
        new entry ids.
        """

        def write(conn: sqlite3.Connection) -> list[int]:
            if held:
                record_suppressed(conn, held, now)
            ids = enqueue(conn, messages, max_attempts, now)
            queued = {(m[0], m[2]): i for m, i in zip(messages, ids, strict=True)}
            for delivery in deliveries:
                delivery.last_id = queued.get(
                    (delivery.action, delivery.fingerprint), delivery.last_id
                )
            save_deliveries(conn, deliveries)
            return ids

        return await self.db.run(write)

    async def forget(self, keys: list[tuple[str, str]]) -> None:
        await self.db.run(lambda c: delete_deliveries(c, keys))

    async def claim(
        self, now: float, limit: int, busy: dict[str, int], per_action: int
    ) -> tuple[list[sqlite3.Row], bool]:
        return await self.db.run(lambda c: claim_due(c, now, limit, busy, per_action))

    async def next_due(self) -> float | None:
        return await self.db.read(next_due)

    async def complete(self, entry_id: int, answer: str, body: str, now: float) -> None:
        await self.db.run(lambda c: complete(c, entry_id, answer, body, now))

    async def fail(
        self, entry_id: int, error: str, body: str, now: float, retry_at: float | None
    ) -> bool:
        return await self.db.run(lambda c: fail(c, entry_id, error, body, now, retry_at))

    async def history(
        self, since: float, action: str | None, limit: int
    ) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
        """Entries queued since `since` and what was held back, newest first."""
        return await self.db.read(
            lambda c: (history(c, since, action, limit), suppressed_since(c, since, limit))
        )

    async def dead_letters(
        self, action: str | None, since: float | None, limit: int
    ) -> list[sqlite3.Row]:
        return await self.db.read(lambda c: dead_letters(c, action, since, limit))

    async def dead_letter(self, dead_id: int) -> sqlite3.Row | None:
        return await self.db.read(lambda c: dead_letter(c, dead_id))

    async def retry_dead(
        self, rows: list[sqlite3.Row], max_attempts: int, now: float
    ) -> tuple[list[int], list[int]]:
        return await self.db.run(lambda c: retry_dead(c, rows, max_attempts, now))

    async def purge_dead(self, older_than: float) -> int:
        return await self.db.run(lambda c: purge_dead(c, older_than))

    async def prune(self, history_before: float, dead_before: float) -> int:
        return await self.db.run(lambda c: prune(c, history_before) + purge_dead(c, dead_before))

    async def get_kv(self, key: str) -> str | None:
        return await self.db.read(lambda c: get_kv(c, key))

    async def put_kv(self, key: str, value: str) -> None:
        await self.db.run(lambda c: put_kv(c, key, value))

    async def counts_since(self, since: float) -> dict[str, int]:
        return await self.db.read(lambda c: counts_since(c, since))
