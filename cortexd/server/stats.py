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
    latency_sum: dict[str, float] = field(default_factory=dict)

    requests_total: int = 0
    errors_total: int = 0
    # What `status` shows under "methods", kept as it goes: method name (in
    # sorted order) -> {"requests": n, "errors": {name: n}}. Building it per
    # `status` cost more than the rest of the answer but the components. An
    # entry is replaced, never changed, so a shallow copy is a snapshot.
    _by_method: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def requests(self) -> Counter[str]:
        """Requests by method (for the metrics; `status` reads the table itself)."""
        return Counter({method: entry["requests"] for method, entry in self._by_method.items()})

    @property
    def errors(self) -> Counter[tuple[str, str]]:
        """Errors by (method, error name), for the metrics."""
        return Counter(
            {
                (method, name): count
                for method, entry in self._by_method.items()
                for name, count in entry["errors"].items()
            }
        )

    def record(self, method: str, error: str | None, seconds: float) -> None:
        self.requests_total += 1
        self.latency_sum[method] = self.latency_sum.get(method, 0.0) + seconds
        entry = self._by_method.get(method)
        if entry is None:
            entry = self._add(method)
        errors = entry["errors"]
        if error is not None:
            self.errors_total += 1
            errors = dict(sorted({**errors, error: errors.get(error, 0) + 1}.items()))
        self._by_method[method] = {"requests": entry["requests"] + 1, "errors": errors}

    def _add(self, method: str) -> dict[str, Any]:
        """A method's first call: its entry, with the table kept in name order."""
        entry: dict[str, Any] = {"requests": 0, "errors": {}}
        self._by_method[method] = entry
        self._by_method = dict(sorted(self._by_method.items()))
        return entry

    def snapshot(self) -> dict[str, object]:
        """The counters as `status` shows them (the totals are kept as they go)."""
        return {
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
            "methods": self._by_method.copy(),
        }
