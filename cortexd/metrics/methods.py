"""The metrics component: the `metrics` method, the HTTP listener and the textfile.

`/health` answers the original daemon's document (`status` healthy | degraded |
unhealthy, per-check statuses, an RFC 3339 timestamp); `/ready` answers 503
until the Unix socket accepts and the monitor runs, and again once shutdown
begins.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import TaskGroup

from cortexd.alerts.manager import AlertManager
from cortexd.config.schema import Config, MetricsConfig
from cortexd.host.files import atomic_write
from cortexd.metrics.events import Metrics, Sources, content_type
from cortexd.metrics.http import HttpListener, Response
from cortexd.server import Call, Method

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from cortexd.inference.engine import Engine
    from cortexd.monitor.scheduler import Monitor
    from cortexd.notify.notifier import Notifier
    from cortexd.runtime import Runtime
    from cortexd.updates.service import UpdateService

log = logging.getLogger(__name__)
TEXTFILE_MODE = 0o644  # node_exporter runs as another user

JSON = "application/json"


def health_document(monitor: Monitor) -> dict[str, Any]:
    """The /health body: the seed's shape, with the host and active alert counts.

    Taken from the monitor's `health` snapshot, so both always agree.
    """
    full = monitor.health.document()
    # The same values as the `health` method, fewer of them.
    return {
        "status": full["status"],
        "checks": full["checks"],
        "timestamp": full["timestamp"],
        "host": full["host"],
        "alerts": full["alerts"],
        "stale_checks": full["stale_checks"],
    }


class MetricsComponent:
    """Owns the registry's hooks, the optional HTTP listener and the textfile writer."""

    name = "metrics"

    def __init__(
        self, daemon: Runtime, metrics: Metrics, monitor: Monitor, alerts: AlertManager
    ) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self.monitor = monitor
        self.alerts = alerts
        self.config: MetricsConfig = daemon.config.metrics
        self.http: HttpListener | None = None
        self._state = "starting"
        # /health's body, derived again only when the health snapshot changed.
        self._health_body = (-1, 200, b"")
        self.textfile_writes = 0
        self.textfile_errors = 0

    async def start(self, tg: TaskGroup) -> None:
        """Install the hooks, bind the HTTP listener (OSError if the port is taken)."""
        self.monitor.after_check.append(self.metrics.on_check)
        self.alerts.listeners.append(self.metrics.on_alert)
        if self.config.http_enabled:
            self.http = HttpListener(
                self.config.http_host,
                self.config.http_port,
                {"/metrics": self._metrics, "/health": self._health, "/ready": self._ready},
            )
            await tg.start(self.http.serve, self.daemon.take_http_listener())
        tg.start_soon(self._textfile_loop)
        self._state = "running"

    def apply_config(self, config: Config) -> None:
        self.config = config.metrics

    async def stop(self) -> None:
        self._state = "stopped"

    def state(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "http": f"{self.config.http_host}:{self.http.bound_port}" if self.http else None,
            "textfile": self.config.textfile_path or None,
            "textfile_writes": self.textfile_writes,
            "textfile_errors": self.textfile_errors,
        }

    # -- HTTP handlers ---------------------------------------------------

    async def _metrics(self) -> Response:
        return Response(200, await self.metrics.render_async(), content_type())

    async def _health(self) -> Response:
        snapshot = self.monitor.health
        snapshot.document()  # rebuilt here if due, which moves the generation on
        generation, status, body = self._health_body
        if generation != snapshot.generation:
            doc = health_document(self.monitor)
            status = 503 if doc["status"] == "unhealthy" else 200
            body = orjson.dumps(doc) + b"\n"
            self._health_body = (snapshot.generation, status, body)
        return Response(status, body, JSON)

    def ready(self) -> dict[str, bool]:
        """Whether the Unix socket accepts and the monitor runs."""
        socket_up = self.daemon.serving()
        monitor_up = self.monitor.running
        return {"ready": socket_up and monitor_up, "socket": socket_up, "monitor": monitor_up}

    async def _ready(self) -> Response:
        doc = self.ready()
        return Response(200 if doc["ready"] else 503, orjson.dumps(doc) + b"\n", JSON)

    # -- textfile --------------------------------------------------------

    async def _textfile_loop(self) -> None:
        while True:
            if self.config.textfile_path:
                await self.write_textfile()
            await anyio.sleep(self.config.textfile_interval_seconds)

    async def write_textfile(self) -> None:
        """Write the exposition to `metrics.textfile_path` atomically (temp file + rename)."""
        path = self.config.textfile_path
        data = await self.metrics.render_async(process=False)
        try:
            # node_exporter reads only *.prom files; the temporary name never is one.
            await anyio.to_thread.run_sync(
                functools.partial(atomic_write, path, data, mode=TEXTFILE_MODE)
            )
            self.textfile_writes += 1
        except OSError as exc:
            self.textfile_errors += 1
            if self.textfile_errors == 1 or self.textfile_errors % 60 == 0:
                log.warning("cannot write the metrics textfile %s: %s", path, exc)


def metrics_methods(metrics: Metrics) -> list[Method]:
    """The `metrics` method."""

    async def render(call: Call) -> dict[str, Any]:
        text = await metrics.render_async()
        return {"content_type": content_type(), "text": text.decode()}

    return [
        Method(
            "metrics",
            render,
            summary="Prometheus text exposition of the daemon's metrics",
        )
    ]


def install(
    daemon: Runtime,
    *,
    monitor: Monitor,
    alerts: AlertManager,
    notifier: Notifier | None = None,
    updates: UpdateService | None = None,
    engine: Engine | None = None,
    collectors: Sequence[Callable[[], Collector]] = (),
) -> MetricsComponent:
    """Build the metrics on the daemon's own registry; add the component and `metrics`.

    `collectors` make other features' own figures, registered beside these when
    the registry is built (the first scrape: prometheus_client loads only then).
    """
    sources = Sources(
        stats=daemon.stats, alerts=alerts, notifier=notifier, engine=engine, updates=updates
    )
    metrics = Metrics(sources)
    for build in collectors:
        metrics.add_collector(build)
    component = MetricsComponent(daemon, metrics, monitor, alerts)
    daemon.components.append(component)
    daemon.registry.add(metrics_methods(metrics))
    return component
