"""Pure logic of the log analyzer: times, levels, classification, rate limits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from cortexd.alerts import Severity
from cortexd.logs.journal import Query, normalize, parse_level
from cortexd.logs.timespec import parse_since
from cortexd.logs.watcher import BUILTIN_PATTERNS, classify, parse_pattern


def test_durations_and_dates() -> None:
    assert parse_since("1h", now=10_000.0) == 10_000.0 - 3600
    assert parse_since("7d", now=1e9) == 1e9 - 7 * 86400
    assert parse_since("90m", now=6000.0) == 600.0
    assert parse_since("2026-11-20") == datetime(2026, 11, 20).timestamp()
    assert parse_since("2026-11-20 14:30") == datetime(2026, 11, 20, 14, 30).timestamp()
    for bad in ("", "1y", "yesterday", "2026-13-01", "-1h"):
        with pytest.raises(ValueError, match="not a duration or date"):
            parse_since(bad)


def test_levels() -> None:
    assert parse_level("err") == parse_level("error") == parse_level("3") == 3
    assert parse_level("WARNING") == parse_level("warn") == 4
    with pytest.raises(ValueError):
        parse_level("8")


def _entry(message: str, **extra: Any) -> dict[str, Any]:
    raw = {"MESSAGE": message, "PRIORITY": "3", "__REALTIME_TIMESTAMP": "1700000000000000"}
    raw.update(extra)
    return normalize(raw)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Out of memory: Killed process 1234 (java) total-vm:1kB", "oom_kill"),
        ("python3[811]: segfault at 8 ip 00007f sp 00007ffd error 4 in libc.so", "segfault"),
        ("blk_update_request: I/O error, dev sda, sector 2048", "disk_io"),
        ("Buffer I/O error on dev sdb1, logical block 0", "disk_io"),
        ("Failed password for root from 203.0.113.9 port 4242 ssh2", "failed_login"),
        ("pam_unix(sudo:auth): authentication failure; logname=x uid=1000", "failed_login"),
        ("nginx.service: Start request repeated too quickly.", "crash_loop"),
        ("app.service: Scheduled restart job, restart counter is at 5.", "crash_loop"),
        ("Started Daily apt download activities.", None),
    ],
)
def test_builtin_patterns(message: str, expected: str | None) -> None:
    found = classify(_entry(message), BUILTIN_PATTERNS)
    assert (found.name if found else None) == expected


def test_custom_patterns() -> None:
    pattern = parse_pattern("db_down:CRITICAL=could not connect to (postgres|mysql)")
    assert pattern.severity is Severity.CRITICAL
    assert classify(_entry("could not connect to Postgres"), [pattern]) is pattern
    for bad in ("no-equals", "x=(", "x:LOUD=y"):
        with pytest.raises(ValueError):
            parse_pattern(bad)


def test_normalize_and_query_filters() -> None:
    entry = _entry("hello", _SYSTEMD_UNIT="ssh.service", SYSLOG_IDENTIFIER="sshd", _PID="12")
    assert entry["unit"] == "ssh.service"
    assert entry["level"] == "err"
    assert entry["pid"] == 12
    assert entry["time"].startswith("2023-11-14T22:13:20")
    assert Query(units=("ssh",)).matches(entry)
    assert Query(units=("sshd",)).matches(entry)
    assert not Query(units=("cron",)).matches(entry)
    assert not Query(max_priority=2).matches(entry)
    assert not Query(exclude_pid=12).matches(entry)
