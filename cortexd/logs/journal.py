"""Reading the systemd journal: systemd-python's reader, or `journalctl -o json`.

Every read is blocking and runs in a worker thread (the callers use
`anyio.to_thread`). Entries come out as plain dicts with the same keys from
either backend, so callers never know which one answered. Filtering by unit
is pushed into the reader's matches where it can be; priority and pattern
filters run here, over a bounded number of scanned entries, so no query can
walk a multi-gigabyte journal without end.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

JOURNAL_DIRS = ("/run/log/journal", "/var/log/journal")
LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
LEVEL_ALIASES = {"error": 3, "warn": 4, "critical": 2, "emergency": 0, "panic": 0}
DEFAULT_SCAN_LIMIT = 200_000
JOURNALCTL_TIMEOUT = 60.0

Entry = dict[str, Any]


def parse_level(text: str) -> int:
    """A syslog priority from a name (`err`, `warning`, `error`) or a digit 0-7.

    Raises:
        ValueError: not a known level.
    """
    lowered = text.strip().lower()
    if lowered.isdigit() and 0 <= int(lowered) <= 7:
        return int(lowered)
    if lowered in LEVELS:
        return LEVELS.index(lowered)
    if lowered in LEVEL_ALIASES:
        return LEVEL_ALIASES[lowered]
    raise ValueError(f"not a log level: {text!r} (one of {', '.join(LEVELS)} or 0-7)")


def level_problem(text: str) -> str | None:
    try:
        parse_level(text)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class Query:
    """What to read: a start (time or cursor), filters and bounds."""

    since: float | None = None
    after_cursor: str | None = None
    units: tuple[str, ...] = ()
    max_priority: int = 7
    pattern: re.Pattern[str] | None = None
    limit: int = 1000
    scan_limit: int = DEFAULT_SCAN_LIMIT
    exclude_pid: int | None = None

    def matches(self, entry: Entry) -> bool:
        if entry["priority"] > self.max_priority:
            return False
        if self.exclude_pid is not None and entry["pid"] == self.exclude_pid:
            return False
        if self.units and not _unit_matches(entry, self.units):
            return False
        return self.pattern is None or self.pattern.search(entry["message"]) is not None


def _unit_matches(entry: Entry, units: tuple[str, ...]) -> bool:
    names = {entry["unit"], entry["identifier"]}
    return any(u in names or f"{u}.service" in names for u in units)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):  # a field logged twice; journalctl gives a list
        return _text(value[0]) if value else ""
    return "" if value is None else str(value)


def _int(value: Any, default: int) -> int:
    try:
        return int(_text(value) if not isinstance(value, int) else value)
    except ValueError:
        return default


def normalize(raw: dict[str, Any]) -> Entry:
    """One entry from either backend as the dict the methods return."""
    stamp = raw.get("__REALTIME_TIMESTAMP")
    ts = stamp.timestamp() if isinstance(stamp, datetime) else _int(stamp, 0) / 1000000.0
    priority = min(7, max(0, _int(raw.get("PRIORITY"), 6)))
    return {
        "ts": ts,
        "time": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds"),
        "cursor": _text(raw.get("__CURSOR")),
        "unit": _text(raw.get("_SYSTEMD_UNIT") or raw.get("UNIT")),
        "identifier": _text(raw.get("SYSLOG_IDENTIFIER") or raw.get("_COMM")),
        "priority": priority,
        "level": LEVELS[priority],
        "message": _text(raw.get("MESSAGE")),
        "pid": _int(raw.get("_PID"), 0) or None,
        "host": _text(raw.get("_HOSTNAME")),
    }


def _binding() -> Any:
    try:
        from systemd import journal  # type: ignore[attr-defined]
    except ImportError:
        return None
    return journal


@functools.cache
def _binding_installed() -> bool:
    """Whether systemd-python is installed, without importing its reader."""
    try:
        return importlib.util.find_spec("systemd.journal") is not None
    except ImportError:  # no `systemd` package at all
        return False


class Journal:
    """The local journal, read with the binding when it imports, else journalctl.

    `directory` reads the files of one journal directory instead of the
    system's (used by tests and for journals copied off another host).

    The binding (with libsystemd's reader, 0.9 MB) is imported by the first
    read, in the reading thread: a host without journal files, where the
    watcher stays off, never loads it.
    """

    def __init__(
        self,
        *,
        use_binding: bool = True,
        directory: str | None = None,
        journal_dirs: tuple[str, ...] = JOURNAL_DIRS,
    ) -> None:
        self._use_binding = use_binding
        self._binding: Any = None
        self._resolved = False
        self.directory = directory
        self.journal_dirs = (directory,) if directory else journal_dirs

    @property
    def backend(self) -> str:
        if self._resolved:
            binding = self._binding is not None
        else:
            binding = self._use_binding and _binding_installed()
        return "systemd-python" if binding else "journalctl"

    def _reader(self) -> Any:
        """The binding, imported on first use (blocking); None: read with journalctl."""
        if not self._resolved:
            self._binding = _binding() if self._use_binding else None
            self._resolved = True
        return self._binding

    def available(self) -> str | None:
        """None when entries can be read, else why not."""
        if self.backend == "journalctl" and not _have("journalctl"):
            return "neither systemd-python nor journalctl is installed"
        for path in self.journal_dirs:
            try:
                if os.listdir(path):
                    return None
            except OSError:
                continue
        return f"no journal files under {' or '.join(self.journal_dirs)}"

    # -- reads -------------------------------------------------------------

    def forward(self, query: Query) -> list[Entry]:
        """Matching entries after `query.since`/`after_cursor`, oldest first, at most `limit`."""
        out: list[Entry] = []
        for scanned, entry in enumerate(self._iterate(query, reverse=False)):
            if scanned >= query.scan_limit or len(out) >= query.limit:
                break
            if query.matches(entry):
                out.append(entry)
        return out

    def tail(self, query: Query) -> list[Entry]:
        """The last `query.limit` matching entries (at or after `since`), oldest first."""
        out: list[Entry] = []
        for scanned, entry in enumerate(self._iterate(query, reverse=True)):
            if scanned >= query.scan_limit or len(out) >= query.limit:
                break
            if query.since is not None and entry["ts"] < query.since:
                break
            if query.matches(entry):
                out.append(entry)
        out.reverse()
        return out

    def last_cursor(self, before: float | None = None) -> str | None:
        """The cursor of the newest entry (logged before `before`, a wall-clock
        time, when given), or None when there is none."""
        for entry in self._iterate(Query(), reverse=True):
            if before is not None and entry["ts"] >= before:
                continue
            return str(entry["cursor"]) or None
        return None

    def _iterate(self, query: Query, *, reverse: bool) -> Iterator[Entry]:
        if self._reader() is not None:
            yield from self._reader_entries(query, reverse)
        else:
            yield from self._journalctl_entries(query, reverse)

    def _reader_entries(self, query: Query, reverse: bool) -> Iterator[Entry]:
        journal: Any = self._reader()
        reader = journal.Reader(path=self.directory) if self.directory else journal.Reader()
        try:
            for unit in query.units:
                names = [unit] if "." in unit else [unit, f"{unit}.service"]
                for name in names:
                    reader.add_match(_SYSTEMD_UNIT=name)
                    reader.add_disjunction()
                reader.add_match(SYSLOG_IDENTIFIER=unit)
                reader.add_disjunction()
            step = reader.get_previous if reverse else reader.get_next
            if reverse:
                reader.seek_tail()
            elif query.after_cursor:
                reader.seek_cursor(query.after_cursor)
                first = reader.get_next()
                if first and first.get("__CURSOR") != query.after_cursor:
                    yield normalize(first)
            elif query.since is not None:
                reader.seek_realtime(query.since)
            else:
                reader.seek_head()
            while True:
                raw = step()
                if not raw:
                    return
                yield normalize(raw)
        finally:
            reader.close()

    def _journalctl_entries(self, query: Query, reverse: bool) -> Iterator[Entry]:
        cmd = ["journalctl", "-o", "json", "--no-pager", "--all", "-q"]
        if self.directory:
            cmd += ["-D", self.directory]
        if reverse:
            cmd.append("--reverse")
        elif query.after_cursor:
            cmd += ["--after-cursor", query.after_cursor]
        elif query.since is not None:
            cmd += ["--since", f"@{query.since:.6f}"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.strip():
                    try:
                        yield normalize(orjson.loads(line))
                    except orjson.JSONDecodeError:
                        continue
        finally:
            # We may stop reading early (limits): end journalctl rather than drain it.
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait(JOURNALCTL_TIMEOUT)


def _have(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None
