"""A progress line on the terminal for work that takes more than a second.

`with out.progress("running checks") as progress:` draws, after a second,
`⠋ running checks 2s: 3 of 16 done; waiting for apt_updates` and keeps it
current until the block ends, then erases it. Nothing is drawn when stdout
is not a terminal or with `--json` (see `Output.interactive`), so pipes and
programs never see it. The line is drawn from a thread because the client waits for
the daemon's answer in a blocking read.
"""

from __future__ import annotations

import time

from cortexctl.parsing import terminal_columns

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from types import TracebackType

    from cortexctl.output import Output

# Work that ends sooner shows nothing: a flash of text is noise.
DELAY = 1.0
# How often the line is redrawn (the spinner and the seconds move).
TICK = 0.1
# How long ending the block waits for the drawing thread.
JOIN_TIMEOUT = 1.0
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Progress:
    """One progress line; `update(detail)` changes what follows the label."""

    def __init__(
        self, out: Output, label: str, *, enabled: bool, delay: float = DELAY, tick: float = TICK
    ) -> None:
        self.out = out
        self.label = label
        self.enabled = enabled
        self.delay = delay
        self.tick = tick
        self.detail = ""
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._draw, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.done()

    def update(self, detail: str) -> None:
        """Show `detail` after the label from the next redraw on."""
        self.detail = detail

    def done(self) -> None:
        """Stop drawing and erase the line (idempotent)."""
        if self._stop is None or self._thread is None:
            return
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT)
        self._stop = self._thread = None
        self.out.clear_status()

    def _draw(self) -> None:
        stop = self._stop
        assert stop is not None
        started = time.monotonic()
        frame = 0
        while not stop.wait(self.tick):
            elapsed = time.monotonic() - started
            if elapsed < self.delay:
                continue
            detail = f": {self.detail}" if self.detail else ""
            text = f"{SPINNER[frame % len(SPINNER)]} {self.label} {elapsed:.0f}s{detail}"
            # One line only: a wrapped status line could not be erased with \r.
            self.out.status(text[: max(1, terminal_columns() - 1)])
            frame += 1
