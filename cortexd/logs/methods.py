"""Socket methods of the log analyzer (docs/protocol.md): tail, errors, search, export.

Reading the journal needs admin rights or membership in `adm` or
`systemd-journal` (access "journal"): it holds authentication logs.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from cortexd.logs.journal import Entry, Journal, Query, level_problem, parse_level
from cortexd.logs.timespec import parse_since, since_problem
from cortexd.logs.watcher import CursorFile, JournalWatcher
from cortexd.protocol import Timeout, Unavailable
from cortexd.server import Call, Method, Param
from cortexd.server.registry import between

if TYPE_CHECKING:
    from cortexd.alerts import AlertManager
    from cortexd.config.schema import LogsConfig
    from cortexd.runtime import Runtime

MAX_LINES = 10_000
READ_DEADLINE = 60.0
FOLLOW_POLL_SECONDS = 1.0
FOLLOW_MAX_SECONDS = 7 * 86400.0
EXPORT_BATCH = 200
FOLLOW_BATCH = 1000
MAX_PATTERN = 1024


def _regex(value: str) -> str | None:
    if not 0 < len(value) <= MAX_PATTERN:
        return f"must be 1 to {MAX_PATTERN} characters"
    try:
        re.compile(value)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    return None


def _units(value: list[str]) -> str | None:
    if len(value) > 64:
        return "at most 64 units"
    return None if all(0 < len(u) <= 256 for u in value) else "unit names must be 1-256 chars"


UNITS = Param("units", list, default=[], items=str, check=_units)
LEVEL = Param("level", str, check=level_problem)


class LogMethods:
    """The log methods over one `Journal`; `config` follows reloads through `daemon`."""

    def __init__(self, journal: Journal, daemon: Runtime) -> None:
        self.journal = journal
        self.daemon = daemon

    @property
    def config(self) -> LogsConfig:
        return self.daemon.config.logs

    def check_limit(self, value: int) -> str | None:
        """A `limit` param's problem against the running `logs.max_entries`.

        Read at each call, not at install, so a reloaded bound takes effect.
        """
        return between(1, self.config.max_entries)(value)

    async def _read(self, fn: Any, query: Query) -> list[Entry]:
        problem = await anyio.to_thread.run_sync(self.journal.available)
        if problem:
            raise Unavailable(f"cannot read the journal: {problem}")
        try:
            with anyio.fail_after(READ_DEADLINE):
                result: list[Entry] = await anyio.to_thread.run_sync(
                    fn, query, abandon_on_cancel=True
                )
        except TimeoutError:
            raise Timeout(READ_DEADLINE) from None
        return result

    async def tail(self, call: Call) -> dict[str, Any]:
        p = call.params
        level = parse_level(p["level"]) if p["level"] else 7
        query = Query(units=tuple(p["units"]), max_priority=level, limit=p["lines"])
        entries = await self._read(self.journal.tail, query)
        if not p["follow"]:
            return {"entries": entries, "count": len(entries), "backend": self.journal.backend}
        await call.stream({"request_id": call.request_id, "entries": entries})
        started = time.time()
        # Follow from the newest entry of all (not only the matching ones),
        # so nothing logged before the call is shown twice.
        position = await anyio.to_thread.run_sync(self.journal.last_cursor)
        sent = len(entries)
        with anyio.move_on_after(FOLLOW_MAX_SECONDS):
            while True:
                await anyio.sleep(FOLLOW_POLL_SECONDS)
                every = Query(
                    after_cursor=position,
                    since=None if position else started,
                    limit=FOLLOW_BATCH,
                )
                fresh = await self._read(self.journal.forward, every)
                if not fresh:
                    continue
                position = fresh[-1]["cursor"]
                shown = [e for e in fresh if query.matches(e)]
                if shown:
                    sent += len(shown)
                    await call.stream({"entries": shown})
        return {"entries": [], "count": sent, "followed": True}

    async def errors(self, call: Call) -> dict[str, Any]:
        p = call.params
        query = Query(
            since=parse_since(p["since"]),
            units=tuple(p["units"]),
            max_priority=3,
            limit=p["limit"] or 1000,
        )
        entries = await self._read(self.journal.forward, query)
        by_unit: dict[str, int] = {}
        for entry in entries:
            unit = entry["unit"] or entry["identifier"] or "unknown"
            by_unit[unit] = by_unit.get(unit, 0) + 1
        return {"entries": entries, "count": len(entries), "by_unit": by_unit}

    async def search(self, call: Call) -> dict[str, Any]:
        p = call.params
        query = Query(
            since=parse_since(p["since"]),
            units=tuple(p["units"]),
            max_priority=parse_level(p["level"]) if p["level"] else 7,
            pattern=re.compile(p["pattern"], re.IGNORECASE),
            limit=p["limit"] or 1000,
        )
        entries = await self._read(self.journal.forward, query)
        return {"entries": entries, "count": len(entries)}

    async def export(self, call: Call) -> dict[str, Any]:
        p = call.params
        limit = p["limit"] or self.config.max_entries
        since = parse_since(p["since"])
        position: str | None = None
        count = 0
        truncated = False
        while True:
            batch_size = min(EXPORT_BATCH, limit - count)
            query = Query(
                since=since if position is None else None,
                after_cursor=position,
                units=tuple(p["units"]),
                limit=batch_size,
            )
            batch = await self._read(self.journal.forward, query)
            if not batch:
                break
            count += len(batch)
            position = batch[-1]["cursor"]
            text = b"".join(orjson.dumps(e) + b"\n" for e in batch).decode()
            await call.stream({"format": "jsonl", "jsonl": text, "count": len(batch)})
            if count >= limit:
                truncated = True
                break
            if len(batch) < batch_size:
                break
        return {"count": count, "format": p["format"], "truncated": truncated}


def log_methods(logs: LogMethods) -> list[Method]:
    """The `logs.*` methods bound to `logs`."""
    limit = Param("limit", int, check=logs.check_limit)
    since = Param("since", str, default="1h", check=since_problem)
    return [
        Method(
            "logs.tail",
            logs.tail,
            params=(
                UNITS,
                LEVEL,
                Param("lines", int, default=50, check=between(1, MAX_LINES)),
                Param("follow", bool, default=False),
            ),
            access="journal",
            timeout=FOLLOW_MAX_SECONDS + 60,
            summary="the newest journal entries; follow streams new ones",
        ),
        Method(
            "logs.errors",
            logs.errors,
            params=(since, UNITS, limit),
            access="journal",
            timeout=READ_DEADLINE + 5,
            summary="journal entries at priority err or worse since a time",
        ),
        Method(
            "logs.search",
            logs.search,
            params=(
                Param("pattern", str, required=True, check=_regex),
                Param("since", str, default="24h", check=since_problem),
                UNITS,
                LEVEL,
                limit,
            ),
            access="journal",
            timeout=READ_DEADLINE + 5,
            summary="journal entries whose message matches a regular expression",
        ),
        Method(
            "logs.export",
            logs.export,
            params=(
                Param("since", str, default="24h", check=since_problem),
                Param("format", str, default="jsonl", choices=("jsonl",)),
                UNITS,
                limit,
            ),
            access="journal",
            timeout=3600.0,
            summary="stream journal entries as JSON lines (bounded by logs.max_entries)",
        ),
    ]


def install(daemon: Runtime, alerts: AlertManager) -> JournalWatcher:
    """Add the log methods and the journal watcher, which raises alerts through `alerts`."""
    journal = Journal()
    config = daemon.config.logs
    cursor = CursorFile(os.path.join(daemon.config.state_dir, "journal-cursor"))
    watcher = JournalWatcher(journal, alerts, config, cursor, news_since=daemon.started_wall)
    daemon.components.append(watcher)
    daemon.registry.add(log_methods(LogMethods(journal, daemon)))
    return watcher
