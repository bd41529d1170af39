"""Request counters by method and error name, for `status` and metrics.

Labels are always registered method names or `unknown`: a caller-chosen
string never becomes a key, so a fuzzer cannot grow these tables.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

UNKNOWN_METHOD = "unknown"


@dataclass(slots=True)
class ServerStats:
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency_sum: dict[str, float] = field(default_factory=dict)

    requests_total: int = 0
    errors_total: int = 0
    _order: list[str] = field(default_factory=list)

    def record(self, method: str, error: str | None, seconds: float) -> None:
        self.requests[method] += 1
        self.requests_total += 1
        self.latency_sum[method] = self.latency_sum.get(method, 0.0) + seconds
        if error is not None:
            self.errors[(method, error)] += 1
            self.errors_total += 1

    def snapshot(self) -> dict[str, object]:
        """The counters as `status` shows them; `status` asks on every call,
        so the totals are kept as they go rather than summed here."""
        requests = self.requests
        if len(requests) != len(self._order):  # a method's first call
            self._order = sorted(requests)
        by_method: dict[str, dict[str, Any]] = {
            method: {"requests": requests[method], "errors": {}} for method in self._order
        }
        if self.errors:
            for (method, name), count in sorted(self.errors.items()):
                entry = by_method.setdefault(method, {"requests": 0, "errors": {}})
                entry["errors"][name] = count
        return {
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
            "methods": by_method,
        }
