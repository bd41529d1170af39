"""The metrics' own state, without prometheus_client: what is counted as it
happens (check runs, alert transitions) and where scrape-time figures come from.

prometheus_client costs about 5 MB of memory and a few milliseconds of
start-up; a daemon nobody scrapes never needs it. `Metrics` counts events in
plain dicts from the start and builds the Prometheus registry (in
`cortexd.metrics.collector`) on the first scrape, `metrics` call or
textfile write.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from cortexd.alerts.model import Alert
from cortexd.server import ServerStats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

PROCESS_PREFIX = "process_"
CHECK_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HasState(Protocol):
    def state(self) -> dict[str, Any]: ...


class CheckRun(Protocol):
    """What the metrics read of a finished check run (the monitor's CheckResult)."""

    @property
    def check_id(self) -> str: ...

    @property
    def duration_ms(self) -> float: ...

    @property
    def status(self) -> Any: ...


class Sources:
    """What the metrics read at scrape time; any may be absent."""

    def __init__(
        self,
        *,
        stats: ServerStats | None = None,
        alerts: Any = None,
        notifier: Any = None,
        engine: Any = None,
        updates: HasState | None = None,
    ) -> None:
        self.stats = stats
        self.alerts = alerts
        self.notifier = notifier
        self.engine = engine
        self.updates = updates


class Events:
    """Counts kept as events happen: check runs and durations, alert transitions.

    Plain counters rather than prometheus_client's metric objects, so no
    `_created` series doubles every label set.
    """

    def __init__(self) -> None:
        self.check_runs: dict[tuple[str, str], int] = {}
        self.check_buckets: dict[str, list[int]] = {}
        self.check_sum: dict[str, float] = {}
        self.alert_events: dict[tuple[str, str], int] = {}


class Metrics:
    """The event counters, and the registry built from them when first asked for.

    `render()` is the exposition text. Collectors of other features join
    with `add_collector` (a factory, so their prometheus_client classes load
    only with the registry).
    """

    def __init__(self, sources: Sources, *, clock: Callable[[], float] = time.time) -> None:
        self.sources = sources
        self.events = Events()
        self.started = clock()
        self._registry: CollectorRegistry | None = None
        self._extra: list[Callable[[], Collector]] = []

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry, built (importing prometheus_client) on first use."""
        if self._registry is None:
            from cortexd.metrics.collector import build_registry

            registry = build_registry(self)
            for build in self._extra:
                registry.register(build())
            self._registry = registry
        return self._registry

    @property
    def loaded(self) -> bool:
        """Whether the registry (and prometheus_client) has been loaded yet."""
        return self._registry is not None

    def add_collector(self, build: Callable[[], Collector]) -> None:
        """Register the collector `build()` makes, now or when the registry is built."""
        if self._registry is not None:
            self._registry.register(build())
        else:
            self._extra.append(build)

    async def on_check(self, result: CheckRun) -> None:
        """Monitor hook: count one finished check run."""
        status = str(getattr(result.status, "value", result.status)).lower()
        events = self.events
        key = (result.check_id, status)
        events.check_runs[key] = events.check_runs.get(key, 0) + 1
        seconds = result.duration_ms / 1000
        counts = events.check_buckets.setdefault(result.check_id, [0] * (len(CHECK_BUCKETS) + 1))
        counts[bisect.bisect_left(CHECK_BUCKETS, seconds)] += 1
        events.check_sum[result.check_id] = events.check_sum.get(result.check_id, 0.0) + seconds

    async def on_alert(self, event: str, alert: Alert) -> None:
        """Alert-manager hook: count one transition."""
        key = (alert.severity.name.lower(), event)
        self.events.alert_events[key] = self.events.alert_events.get(key, 0) + 1

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry)

    async def render_async(self, *, process: bool = True) -> bytes:
        """`render()`, with only the collection on the loop.

        Collectors read state the loop owns, so they run here; the text
        formatting, about three quarters of the cost, runs in a worker thread
        on the collected (immutable) families. `process=False` leaves out the
        `process_*` families: in node_exporter's textfile collector they would
        clash with node_exporter's own process metrics.
        """
        from cortexd.metrics.collector import Collected, generate_latest

        families = [
            f for f in self.registry.collect() if process or not f.name.startswith(PROCESS_PREFIX)
        ]
        return await anyio.to_thread.run_sync(generate_latest, Collected(families))


def content_type() -> str:
    """The exposition's Content-Type, as prometheus_client writes it."""
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    return CONTENT_TYPE_LATEST
