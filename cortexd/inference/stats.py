"""Counters and process figures the inference engine reports in `status`."""

from __future__ import annotations

import bisect
import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

NS_PER_S = 1_000_000_000
# Seconds; a small model answers in tens of milliseconds, a queued request waits longer.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Totals:
    """Counters for `status`.

    The engine counts on the event loop; the metrics may read them from a
    thread (the HTTP exporter), so every change goes through `add`, under a
    lock, and readers take a snapshot.
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
    # Time to first token, as a histogram over TTFT_BUCKETS (cumulative at
    # export time, like Prometheus's `le` buckets).
    ttft_counts: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS) + 1))
    ttft_sum: float = 0.0

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def record(self, result: dict[str, Any]) -> None:
        """Count the final result of a request the runner ran."""
        reason = result["stop_reason"]
        outcome = {"stop": "completed", "length": "completed", "timeout": "timed_out"}
        counts: dict[str, float] = {
            outcome.get(reason, "cancelled"): 1,
            "prompt_tokens": result["prompt_eval_count"],
            "generated_tokens": result["eval_count"],
            "eval_seconds": result["eval_duration"] / NS_PER_S,
        }
        self.add(**counts)
        if result.get("ttft_ms") is not None:
            self.observe_ttft(result["ttft_ms"] / 1000)

    def observe_ttft(self, seconds: float) -> None:
        """Record one request's time to first token (queue wait included)."""
        index = bisect.bisect_left(TTFT_BUCKETS, seconds)
        with self._lock:
            self.ttft_counts[index] += 1
            self.ttft_sum += seconds

    def ttft_histogram(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative `(le, count)` buckets ending with `+Inf`, and the sum of seconds."""
        with self._lock:
            counts, total = list(self.ttft_counts), self.ttft_sum
        cumulative = list(itertools.accumulate(counts))
        labels = [f"{b:g}" for b in TTFT_BUCKETS] + ["+Inf"]
        return list(zip(labels, cumulative, strict=True)), total

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
    """The daemon's own resident memory (the model's is the runner's)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
