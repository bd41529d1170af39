"""Times as operators type them: `1h`, `7d`, `90m`, `2026-11-20`, `2026-11-20 14:00`."""

from __future__ import annotations

import re
import time
from datetime import datetime

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")


def parse_since(text: str, now: float | None = None) -> float:
    """Seconds since the epoch for a duration back from `now` or a local date.

    Raises:
        ValueError: `text` is neither a duration (`1h`) nor a date (`2026-11-20`).
    """
    found = _DURATION.match(text)
    if found:
        return (time.time() if now is None else now) - float(found.group(1)) * _UNITS[
            found.group(2)
        ]
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).timestamp()
        except ValueError:
            continue
    raise ValueError(f"not a duration or date: {text!r} (e.g. 1h, 7d, 2026-11-20)")


def since_problem(text: str) -> str | None:
    """A param check: the problem with `text` as a time, or None."""
    try:
        parse_since(text)
    except ValueError as exc:
        return str(exc)
    return None
