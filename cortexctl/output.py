"""Terminal output for cortexctl: tables for people, JSON for programs."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO


class Output:
    """Human text by default, JSON with --json; colour only on a TTY without NO_COLOR."""

    def __init__(self, as_json: bool, stream: TextIO = sys.stdout) -> None:
        self.as_json = as_json
        self.stream = stream
        self.colour = stream.isatty() and "NO_COLOR" not in os.environ

    def json(self, value: Any) -> None:
        self.stream.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def table(self, rows: list[tuple[str, Any]]) -> None:
        width = max((len(k) for k, _ in rows), default=0)
        for key, value in rows:
            self.line(f"{key:<{width}}  {value}")


def ago(seconds: float | None, missing: str = "-") -> str:
    """An age as people say it: `3d ago`, `5h ago`, `12m ago`, `40s ago`."""
    if seconds is None:
        return missing
    whole = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if whole >= size:
            return f"{whole // size}{unit} ago"
    return f"{whole}s ago"
