"""Counters and process figures the inference engine reports in `status`."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Totals:
    """Counters for `status`.

    The worker counts what it runs; the loop counts rejections and requests
    cancelled while still queued. Both go through `add`, under a lock, since
    `+=` on an attribute is not atomic across threads.
    """

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failed: int = 0
    rejected_full: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    eval_seconds: float = 0.0

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict[str, Any]:
        rate = self.generated_tokens / self.eval_seconds if self.eval_seconds > 0 else 0.0
        return {
            "requests": self.requests,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "timed_out": self.timed_out,
            "failed": self.failed,
            "rejected_queue_full": self.rejected_full,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "tokens_per_second": round(rate, 2),
        }


def rss_bytes() -> int | None:
    """The daemon's resident memory (model weights mapped in count once touched)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
