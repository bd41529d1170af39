"""Prometheus figures of repair and self-healing, read from their counters at scrape time.

The composition root hands `RepairCollector` to the metrics feature, so
repair and healing need no change in the metrics package.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cortexd.healing.loop import Healer
    from cortexd.repair.manager import RepairManager


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
