"""The schema of `notify.db`: the outbox, dead letters, held-back records, delivery state."""

from __future__ import annotations

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
    Migration(
        2,
        """
        ALTER TABLE outbox ADD COLUMN body TEXT;
        ALTER TABLE dead_letter ADD COLUMN body TEXT;
        CREATE INDEX outbox_open_key ON outbox(action, fingerprint, id)
            WHERE status IN ('pending', 'processing');
        CREATE TABLE delivery (
            fingerprint TEXT NOT NULL,
            action TEXT NOT NULL,
            alert_id TEXT NOT NULL,
            kind TEXT,
            severity TEXT NOT NULL,
            labels TEXT NOT NULL,
            queued_at REAL NOT NULL,
            fired_at REAL,
            last_id INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (fingerprint, action)
        ) WITHOUT ROWID
        """,
    ),
)
