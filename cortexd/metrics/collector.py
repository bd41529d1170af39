"""The daemon's Prometheus metrics, on its own `CollectorRegistry` (no global state).

Events that happen once (a check run, an alert transition) are counted as
they happen by the hooks `Metrics` installs; figures other parts already keep
(request counters, notifier counters, inference totals, queue depths) are read
at scrape time, so nothing is counted twice and a scrape never waits on I/O.
Names follow Prometheus conventions: `cortex_` prefix, base units, `_total`
on counters.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from cortexd import __version__
from cortexd.metrics.events import (
    CHECK_BUCKETS,
    PROCESS_PREFIX,
    Events,
    Metrics,
    Sources,
)

__all__ = ["PROCESS_PREFIX", "Collected", "Metrics", "Sources", "build_registry", "generate_latest"]


class _Snapshot(Collector):
    """Reads figures other components keep, at each scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._alerts()
        yield from self._notify()
        yield from self._inference()
        yield from self._updates()

    def _updates(self) -> Iterator[Metric]:
        updates = self.sources.updates
        if updates is None:
            return
        state = updates.state()
        applied = CounterMetricFamily(
            "cortex_updates_applied",
            "Confirmed package updates run through `update apply`, by result.",
            labels=("result",),
        )
        applied.add_metric(("success",), state.get("applied", 0))
        applied.add_metric(("failure",), state.get("failed", 0))
        yield applied

    def _requests(self) -> Iterator[Metric]:
        stats = self.sources.stats
        if stats is None:
            return
        total = CounterMetricFamily(
            "cortex_requests",
            "Requests answered, by method and result code (ok or the error name).",
            labels=("method", "code"),
        )
        errors: dict[str, int] = {}
        for (method, code), count in sorted(stats.errors.items()):
            total.add_metric((method, code), count)
            errors[method] = errors.get(method, 0) + count
        for method, count in sorted(stats.requests.items()):
            total.add_metric((method, "ok"), count - errors.get(method, 0))
        yield total
        latency = SummaryMetricFamily(
            "cortex_request_duration_seconds",
            "Time to answer a request, by method.",
            labels=("method",),
        )
        for method, count in sorted(stats.requests.items()):
            latency.add_metric((method,), count, stats.latency_sum.get(method, 0.0))
        yield latency
        yield GaugeMetricFamily(
            "cortex_connections", "Client connections open now.", value=stats.connections_open
        )
        yield CounterMetricFamily(
            "cortex_connections_refused",
            "Connections refused at the connection limit.",
            value=stats.connections_refused,
        )

    def _alerts(self) -> Iterator[Metric]:
        alerts = self.sources.alerts
        if alerts is None:
            return
        state = alerts.state()
        active = GaugeMetricFamily(
            "cortex_alerts_active",
            "Alerts firing or acknowledged (not cleared), by severity.",
            labels=("severity",),
        )
        for severity, count in sorted(state.get("active_by_severity", {}).items()):
            active.add_metric((severity.lower(),), count)
        yield active
        yield GaugeMetricFamily(
            "cortex_alerts_firing", "Alerts firing (not acknowledged).", value=state["firing"]
        )
        yield GaugeMetricFamily(
            "cortex_alerts_flapping",
            "Alerts flapping: changing state too often to be notified of each change.",
            value=state.get("flapping", 0),
        )

    def _notify(self) -> Iterator[Metric]:
        notifier = self.sources.notifier
        if notifier is None:
            return
        for name, help_text, counts in (
            ("sent", "Notifications delivered, by action.", notifier.sent),
            ("failed", "Failed delivery attempts, by action.", notifier.failed),
            ("dead_lettered", "Notifications moved to dead letters.", notifier.dead_lettered),
        ):
            family = CounterMetricFamily(
                f"cortex_notifications_{name}", help_text, labels=("action",)
            )
            for action, count in sorted(counts.items()):
                family.add_metric((action,), count)
            yield family
        held = CounterMetricFamily(
            "cortex_notifications_suppressed",
            "Notifications held back (deferred, not dropped), by reason"
            " (silenced, cooldown, rate_limit, flapping, outbox_full).",
            labels=("reason",),
        )
        for reason, count in sorted(notifier.suppressed.items()):
            held.add_metric((reason,), count)
        yield held
        yield GaugeMetricFamily(
            "cortex_notifications_pending",
            "Notifications in the outbox waiting for delivery.",
            value=max(0, notifier.pending),
        )

    def _inference(self) -> Iterator[Metric]:
        engine = self.sources.engine
        if engine is None:
            return
        yield GaugeMetricFamily(
            "cortex_inference_queue_depth", "Requests waiting.", value=len(engine.queue)
        )
        yield GaugeMetricFamily(
            "cortex_inference_queue_limit", "Queue capacity.", value=engine.queue.depth
        )
        totals = engine.totals.snapshot()
        outcomes = CounterMetricFamily(
            "cortex_inference_requests",
            "Inference requests by outcome.",
            labels=("outcome",),
        )
        for outcome in ("completed", "cancelled", "timed_out", "failed", "rejected_queue_full"):
            outcomes.add_metric((outcome,), totals.get(outcome, 0))
        yield outcomes
        tokens = CounterMetricFamily(
            "cortex_inference_tokens", "Tokens processed, by kind.", labels=("kind",)
        )
        tokens.add_metric(("prompt",), totals.get("prompt_tokens", 0))
        tokens.add_metric(("generated",), totals.get("generated_tokens", 0))
        yield tokens
        yield CounterMetricFamily(
            "cortex_inference_eval_seconds",
            "Time spent generating tokens.",
            value=engine.totals.eval_seconds,
        )
        buckets, ttft_sum = engine.totals.ttft_histogram()
        yield HistogramMetricFamily(
            "cortex_inference_time_to_first_token_seconds",
            "From a request's arrival to its first generated token (queue wait included).",
            buckets=buckets,
            sum_value=ttft_sum,
        )
        yield GaugeMetricFamily(
            "cortex_inference_tokens_per_second",
            "Generated tokens per second of generation, since start.",
            value=totals.get("tokens_per_second", 0.0),
        )
        yield from _runner(engine.runner_status())


def _runner(runner: dict[str, Any]) -> Iterator[Metric]:
    """The inference runner process: up, pid, memory, restarts, crashes, last exit."""
    pid = runner.get("pid")
    yield GaugeMetricFamily(
        "cortex_inference_runner_up",
        "1 while a runner process serves the model.",
        value=int(bool(pid)),
    )
    if pid:
        yield GaugeMetricFamily(
            "cortex_inference_runner_pid", "Process id of the inference runner.", value=pid
        )
    if runner.get("rss_bytes") is not None:
        yield GaugeMetricFamily(
            "cortex_inference_runner_resident_memory_bytes",
            "Resident memory of the inference runner (the model's; the daemon's is apart).",
            value=runner["rss_bytes"],
        )
    yield CounterMetricFamily(
        "cortex_inference_runner_restarts",
        "Automatic restarts of the inference runner after a crash or a failed start.",
        value=runner.get("restarts", 0),
    )
    yield CounterMetricFamily(
        "cortex_inference_runner_crashes",
        "Inference runners that died (a signal or an unexpected exit).",
        value=runner.get("crashes", 0),
    )
    last = runner.get("last_exit")
    if last:
        ended = GaugeMetricFamily(
            "cortex_inference_runner_last_exit_timestamp_seconds",
            "When the last runner crash happened, labelled by how it ended and what it was doing.",
            labels=("how", "during"),
        )
        ended.add_metric((last["how"], last["during"]), last["at"])
        yield ended


class _Events(Collector):
    """The event counters `Events` keeps, as metric families."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def collect(self) -> Iterator[Metric]:
        counts = self.events
        runs = CounterMetricFamily(
            "cortex_check_runs", "Check runs, by check and status.", labels=("check", "status")
        )
        for key, count in sorted(counts.check_runs.items()):
            runs.add_metric(key, count)
        yield runs
        duration = HistogramMetricFamily(
            "cortex_check_duration_seconds",
            "How long a check took to collect.",
            labels=("check",),
        )
        bounds = [*(str(b) for b in CHECK_BUCKETS), "+Inf"]
        for check, buckets in sorted(counts.check_buckets.items()):
            cumulative = list(itertools.accumulate(buckets))
            duration.add_metric(
                (check,), list(zip(bounds, cumulative, strict=True)), counts.check_sum[check]
            )
        yield duration
        events = CounterMetricFamily(
            "cortex_alert_transitions",
            "Alert state changes, by severity and event (fired, reopened, escalated, resolved).",
            labels=("severity", "event"),
        )
        for key, count in sorted(counts.alert_events.items()):
            events.add_metric(key, count)
        yield events


def build_registry(metrics: Metrics) -> CollectorRegistry:
    """The registry of `metrics`: its event counters, build info, process metrics and
    the figures of `metrics.sources` read at each scrape."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Events(metrics.events))
    info = Gauge("cortex_build_info", "cortexd's version.", ("version",), registry=registry)
    info.labels(__version__).set(1)
    Gauge("cortex_start_time_seconds", "When the daemon started.", registry=registry).set(
        metrics.started
    )
    # The standard process_* names (no prefix), as every Prometheus client
    # exports them: dashboards and alerts written for them work unchanged.
    ProcessCollector(registry=registry)
    registry.register(_Snapshot(metrics.sources))
    return registry


class Collected:
    """Families already collected, in the shape `generate_latest` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
