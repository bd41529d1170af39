"""Prometheus figures of repair and self-healing, read from their counters at scrape time.

`MetricsLink` is a small component: when the daemon starts it finds the
metrics component (if the daemon has one) and registers `RepairCollector`
on its registry, so repair needs no change in the metrics package and a
daemon without metrics simply has none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from anyio.abc import TaskGroup
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from cortexd.config.schema import Config

if TYPE_CHECKING:
    from cortexd.app import Daemon
    from cortexd.healing.loop import Healer
    from cortexd.repair.manager import RepairManager

log = logging.getLogger(__name__)


class RepairCollector(Collector):
    """cortex_repairs_total by fix and result; healing attempts, outcomes and duration."""

    def __init__(self, repair: RepairManager, healer: Healer) -> None:
        self.repair = repair
        self.healer = healer

    def collect(self) -> Iterator[Metric]:
        repairs = CounterMetricFamily(
            "cortex_repairs", "Fixes applied, by fix and result.", labels=("fix", "result")
        )
        for fix, count in sorted(self.repair.applied.items()):
            repairs.add_metric((fix, "ok"), count)
        for fix, count in sorted(self.repair.failed.items()):
            repairs.add_metric((fix, "failed"), count)
        yield repairs
        counts = self.healer.counts
        for key, text in (
            ("attempts", "Self-healing restarts attempted."),
            ("successes", "Self-healing restarts after which the unit was active."),
            ("failures", "Self-healing restarts after which the unit was not active."),
            ("given_up", "Units self-healing gave up on."),
        ):
            yield CounterMetricFamily(f"cortex_healing_{key}", text, value=counts[key])
        yield SummaryMetricFamily(
            "cortex_healing_duration_seconds",
            "Time from a restart to its verdict (settle time included).",
            count_value=self.healer.duration_count,
            sum_value=self.healer.duration_sum_ms / 1000,
        )


class MetricsLink:
    """Registers `RepairCollector` with the daemon's metrics component at start."""

    name = "repair-metrics"

    def __init__(self, daemon: Daemon, repair: RepairManager, healer: Healer) -> None:
        self.daemon = daemon
        self.collector = RepairCollector(repair, healer)
        self.linked = False

    async def start(self, tg: TaskGroup) -> None:
        for component in self.daemon.components:
            registry = getattr(getattr(component, "metrics", None), "registry", None)
            if registry is not None:
                registry.register(self.collector)
                self.linked = True
                return
        log.debug("no metrics component; repair metrics are not exported")

    def apply_config(self, config: Config) -> None:
        return None

    async def stop(self) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {"state": "linked" if self.linked else "no metrics"}
