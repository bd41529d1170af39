"""The journal watcher: classify new journal lines and raise alerts for them.

Each poll reads the entries after the stored cursor, matches their messages
against the patterns (built-in ones for OOM kills, segfaults, disk I/O
errors, failed logins and service crash loops, plus `logs.patterns`), and
raises one alert per unit and pattern through the alert manager — at most
one notice per `logs.alert_interval_seconds` for the same pair, the rest
counted. The cursor is written (atomically) after the alerts of its batch,
so a restart neither re-alerts old lines nor skips new ones; a crash between
the two at worst repeats a notice, which the alert manager folds into the
same alert.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from cortexd.alerts import AlertCapReached, AlertManager, Severity
from cortexd.config.schema import Config, LogsConfig
from cortexd.host.files import atomic_write
from cortexd.logs.journal import Entry, Journal, Query

log = logging.getLogger(__name__)

BATCH = 5000
MAX_DESCRIPTION = 1000


@dataclass(frozen=True, slots=True)
class Pattern:
    """One class of trouble: a regex over the message and the alert it raises."""

    name: str
    regex: re.Pattern[str]
    severity: Severity
    category: str
    title: str


def _p(name: str, regex: str, severity: Severity, category: str, title: str) -> Pattern:
    return Pattern(name, re.compile(regex, re.IGNORECASE), severity, category, title)


BUILTIN_PATTERNS = (
    _p(
        "oom_kill",
        r"out of memory: kill|oom-kill:|invoked oom-killer|oom killer",
        Severity.CRITICAL,
        "memory_usage",
        "process killed for lack of memory",
    ),
    _p(
        "segfault",
        r"segfault at |general protection fault|segmentation fault|core dumped",
        Severity.ERROR,
        "service",
        "segmentation fault",
    ),
    _p(
        "disk_io",
        r"i/o error|ext4-fs error|xfs .*error|blk_update_request: .*error|medium error",
        Severity.CRITICAL,
        "disk_usage",
        "disk I/O error",
    ),
    _p(
        "failed_login",
        r"failed password for|authentication failure|invalid user \S+ from|failed login",
        Severity.WARNING,
        "system",
        "failed login",
    ),
    _p(
        "crash_loop",
        r"start request repeated too quickly|start-limit-hit|restart counter is at \d+",
        Severity.ERROR,
        "service",
        "service crash loop",
    ),
)
_CUSTOM = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?::(?P<severity>[A-Za-z]+))?=(?P<regex>.+)$")


def parse_pattern(text: str) -> Pattern:
    """`name=regex` or `name:SEVERITY=regex` from `logs.patterns`.

    Raises:
        ValueError: the text or its regex is malformed.
    """
    found = _CUSTOM.match(text)
    if not found:
        raise ValueError(f"expected NAME=REGEX or NAME:SEVERITY=REGEX, got {text!r}")
    severity = Severity.parse(found.group("severity") or "ERROR")
    try:
        regex = re.compile(found.group("regex"), re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"bad regex in {text!r}: {exc}") from None
    name = found.group("name")
    return Pattern(name, regex, severity, "service", f"journal pattern {name}")


def build_patterns(config: LogsConfig) -> list[Pattern]:
    """The active patterns: built-ins (unless turned off) then the configured ones."""
    patterns = list(BUILTIN_PATTERNS) if config.builtin_patterns else []
    for text in config.patterns:
        try:
            patterns.append(parse_pattern(text))
        except ValueError as exc:
            log.error("logs.patterns: %s (ignored)", exc)
    return patterns


def classify(entry: Entry, patterns: Sequence[Pattern]) -> Pattern | None:
    """The first pattern matching the entry's message, or None."""
    message = entry["message"]
    for pattern in patterns:
        if pattern.regex.search(message):
            return pattern
    return None


class CursorFile:
    """The watcher's journal position, one line in a file, replaced atomically."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> str | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except FileNotFoundError:
            return None

    def save(self, cursor: str) -> None:
        atomic_write(self.path, (cursor + "\n").encode())


class JournalWatcher:
    """A component polling the journal for known trouble (see the module docstring)."""

    name = "journal_watcher"

    def __init__(
        self,
        journal: Journal,
        alerts: AlertManager,
        config: LogsConfig,
        cursor: CursorFile,
        *,
        clock: Callable[[], float] = time.monotonic,
        news_since: float | None = None,
    ) -> None:
        # `news_since` (wall clock; default now): on a first start, lines from
        # then on are news, older ones history. The daemon passes its own start,
        # so lines logged while the features were still starting are not lost.
        self.journal = journal
        self.alerts = alerts
        self.config = config
        self.cursor = cursor
        self.clock = clock
        self.patterns = build_patterns(config)
        self._position: str | None = None
        self._started_wall = time.time() if news_since is None else news_since
        self._last_notice: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._state = "starting"
        self.lines_read = 0
        self.matched = 0
        self.alerts_raised = 0

    def state(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "backend": self.journal.backend,
            "lines_read": self.lines_read,
            "matched": self.matched,
            "alerts_raised": self.alerts_raised,
            "patterns": [p.name for p in self.patterns],
        }

    async def start(self, tg: TaskGroup) -> None:
        if not self.config.watch:
            self._state = "disabled"
            return
        problem = await anyio.to_thread.run_sync(self.journal.available)
        if problem:
            self._state = "unavailable"
            log.info("journal watcher off: %s", problem)
            return
        self._position = await anyio.to_thread.run_sync(self.cursor.load)
        if self._position is None:
            # First start: lines logged before we ever ran are history, not news.
            self._position = await anyio.to_thread.run_sync(
                self.journal.last_cursor, self._started_wall
            )
            if self._position:
                try:
                    await anyio.to_thread.run_sync(self.cursor.save, self._position)
                except OSError as exc:  # a full or read-only state dir: the next poll saves it
                    log.warning("journal cursor not saved: %s", exc)
        self._state = "running"
        tg.start_soon(self._loop)

    def apply_config(self, config: Config) -> None:
        self.config = config.logs
        self.patterns = build_patterns(self.config)

    async def stop(self) -> None:
        self._state = "stopped"

    async def _loop(self) -> None:
        while True:
            if self.config.watch:
                try:
                    await self.poll()
                except Exception:  # isolation boundary: the next poll retries
                    log.exception("journal watcher poll failed")
            await anyio.sleep(self.config.poll_seconds)

    async def poll(self) -> int:
        """Read and classify the entries after the cursor; returns how many were read."""
        query = Query(
            after_cursor=self._position,
            since=None if self._position else self._started_wall,
            limit=BATCH,
            exclude_pid=os.getpid(),
        )
        entries = await anyio.to_thread.run_sync(self.journal.forward, query)
        if not entries:
            return 0
        for entry in entries:
            pattern = classify(entry, self.patterns)
            if pattern is not None:
                self.matched += 1
                await self._raise(entry, pattern)
        self.lines_read += len(entries)
        self._position = entries[-1]["cursor"]
        await anyio.to_thread.run_sync(self.cursor.save, self._position)
        return len(entries)

    async def _raise(self, entry: Entry, pattern: Pattern) -> None:
        unit = entry["unit"] or entry["identifier"] or "unknown"
        key = (unit, pattern.name)
        now = self.clock()
        last = self._last_notice.get(key)
        if last is not None and now - last < self.config.alert_interval_seconds:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_notice[key] = now
        suppressed = self._suppressed.pop(key, 0)
        try:
            await self._notice(entry, pattern, unit, suppressed)
        except AlertCapReached:
            # Counted and logged by the manager; the cursor still moves on.
            return
        self.alerts_raised += 1

    async def _notice(self, entry: Entry, pattern: Pattern, unit: str, suppressed: int) -> None:
        await self.alerts.notice(
            source="journal",
            labels={"unit": unit, "pattern": pattern.name},
            severity=pattern.severity,
            category=pattern.category,
            title=f"{pattern.title}: {unit}",
            description=entry["message"][:MAX_DESCRIPTION],
            annotations={
                "journal_time": entry["time"],
                "priority": entry["level"],
                "similar_lines_suppressed": suppressed,
            },
            # A log line is something that happened: it ends on its own
            # (alerts.event_ttl_seconds after the last matching line).
            event=True,
        )
