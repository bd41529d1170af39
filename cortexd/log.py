"""Logging to journald with structured fields, or readable lines on stderr.

Context travels as upper-case `extra` keys (`extra={"REQUEST_ID": rid}`); the
journal gets them as fields, stderr shows them as `key=value` after the text.
The component is the second part of the logger name (`cortexd.server` →
`server`) unless a record sets `COMPONENT` itself.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from cortexd.config import LoggingConfig

ROOT_LOGGER = "cortexd"
SYSLOG_IDENTIFIER = "cortexd"
JOURNAL_SOCKET = "/run/systemd/journal/socket"

LEVELS: dict[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
}
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
_LEVEL_NAMES = {logging.WARNING: "WARN", logging.CRITICAL: "CRIT"}


def component_of(record: logging.LogRecord) -> str:
    """The record's `COMPONENT`, else the second part of its logger name."""
    explicit = record.__dict__.get("COMPONENT")
    if explicit:
        return str(explicit)
    parts = record.name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured context of a record: its upper-case attributes."""
    return {
        k: v
        for k, v in record.__dict__.items()
        if k.isupper() and k != "COMPONENT" and not k.startswith("_")
    }


class StderrFormatter(logging.Formatter):
    """`2026-11-24 12:00:00.123 INFO  server: text key=value`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        text = record.getMessage()
        extra = " ".join(f"{k.lower()}={v}" for k, v in _fields(record).items())
        line = f"{stamp}.{int(record.msecs):03d} {level:<5} {component_of(record)}: {text}"
        if extra:
            line = f"{line} {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JournalHandler(logging.Handler):
    """Send records to journald with `COMPONENT`, `PRIORITY` and context fields.

    If journald goes away (its socket refuses), records go to `fallback`
    (stderr) as readable lines rather than being lost or printing a traceback
    per record.
    """

    def __init__(self, send: Callable[..., Any], fallback: TextIO | None = None) -> None:
        super().__init__()
        self._send = send
        self._fallback = fallback
        self._formatter = StderrFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {
                "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                "COMPONENT": component_of(record),
                "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,  # systemd-python formats it with {:d}
                "CODE_FUNC": record.funcName,
            }
            fields.update({k: str(v) for k, v in _fields(record).items()})
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
            self._send(message, **fields)
        except OSError:
            self._write_fallback(record)
        except Exception:  # a logging failure must never take the caller down
            self.handleError(record)

    def _write_fallback(self, record: logging.LogRecord) -> None:
        stream = self._fallback or sys.stderr
        try:
            stream.write(self._formatter.format(record) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone too; nothing left to tell


def stderr_is_journal(
    stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """True when systemd connected our stderr to the journal (JOURNAL_STREAM matches)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def journald_listening(path: str = JOURNAL_SOCKET) -> bool:
    """True when journald accepts datagrams on `path` (a stale socket file is not enough)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def setup_logging(config: LoggingConfig, level_override: str | None = None) -> str:
    """Point the `cortexd` logger at the journal or stderr; returns the target chosen.

    `logging.target: journal` falls back to stderr, with a warning there,
    when journald does not answer or systemd-python is missing. Logging
    configuration is process-wide by nature; this is called only from the
    entry point.
    """
    root = logging.getLogger(ROOT_LOGGER)
    root.setLevel(LEVELS[level_override or config.level])
    root.propagate = False
    target = config.target
    if target == "auto":
        target = "journal" if stderr_is_journal() else "stderr"
    handler: logging.Handler | None = None
    problem = ""
    if target == "journal":
        try:
            from systemd import journal  # type: ignore[attr-defined]  # only for the journal
        except ImportError:
            problem = "systemd-python is not installed"
        else:
            if journald_listening():
                handler = JournalHandler(journal.send)
            else:
                problem = f"journald does not answer on {JOURNAL_SOCKET}"
        if handler is None:
            target = "stderr"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter())
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    if problem:
        root.warning("logging to stderr instead of the journal: %s", problem)
    return target


def set_level(level: str) -> None:
    """Change the daemon's log level (on reload)."""
    logging.getLogger(ROOT_LOGGER).setLevel(LEVELS[level])
