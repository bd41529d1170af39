"""Terminal output for cortexctl: tables for people, JSON for programs.

With `--json` a command prints one JSON document, or JSON lines when its
answer streams (`{"stream": …}` per message, then `{"result": …}`); a
failure is `{"error": …}` on one line. Colour and progress appear only when
stdout is a terminal and `--json` is off.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from typing import Any, TextIO

    from cortexctl.progress import Progress


class Output:
    """Where a command's answer goes, and in which form."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream if stream is not None else sys.stdout
        self._colour: bool | None = None
        # Set once a progress line may be drawn from its thread.
        self._lock: threading.Lock | None = None
        self._status_shown = False

    @property
    def interactive(self) -> bool:
        """True when a person watches: stdout is a terminal and `--json` is off."""
        if self.as_json:
            return False
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    @property
    def colour(self) -> bool:
        if self._colour is None:
            self._colour = self.interactive and "NO_COLOR" not in os.environ
        return self._colour

    def result(self, data: Any, render: Callable[[Any], object]) -> None:
        """Print `data` as JSON with `--json`, else as `render(data)` prints it."""
        if self.as_json:
            self.json(data)
        else:
            render(data)

    def json(self, value: Any) -> None:
        """One JSON document, indented for people who read it too."""
        self.stream.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    def json_line(self, value: Any) -> None:
        """One JSON line, flushed: for streamed answers and errors."""
        self.stream.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.stream.flush()

    def event(self, data: Any) -> None:
        """With `--json`, one streamed message as the line `{"stream": data}`."""
        if self.as_json:
            self.json_line({"stream": data})

    def say(self, text: str) -> None:
        """A line for people as work goes on (plans, outcomes); nothing with `--json`."""
        if not self.as_json:
            self.line(text)

    def line(self, text: str = "") -> None:
        if self._lock is None:
            self.stream.write(text + "\n")
        else:
            self.write(text + "\n")

    def write(self, text: str) -> None:
        """Text as it comes (a streamed answer), flushed, after clearing any progress line."""
        if self._lock is None:
            self.stream.write(text)
            self.stream.flush()
            return
        with self._lock:
            self._clear_status()
            self.stream.write(text)
            self.stream.flush()

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def table(self, rows: list[tuple[str, Any]]) -> None:
        width = max((len(k) for k, _ in rows), default=0)
        for key, value in rows:
            self.line(f"{key:<{width}}  {value}")

    def progress(self, label: str) -> Progress:
        """A progress line for work that may last over a second (a no-op unless interactive)."""
        from cortexctl.progress import Progress

        if self.interactive and self._lock is None:
            import threading

            self._lock = threading.Lock()
        return Progress(self, label, enabled=self.interactive)

    def status(self, text: str) -> None:
        """Draw `text` as the progress line (replacing the last one)."""
        assert self._lock is not None
        with self._lock:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._status_shown = True

    def clear_status(self) -> None:
        if self._lock is None:
            return
        with self._lock:
            self._clear_status()
            self.stream.flush()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.stream.write("\r\033[K")
            self._status_shown = False


def ago(seconds: float | None, missing: str = "-") -> str:
    """An age as people say it: `3d ago`, `5h ago`, `12m ago`, `40s ago`."""
    if seconds is None:
        return missing
    whole = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if whole >= size:
            return f"{whole // size}{unit} ago"
    return f"{whole}s ago"
