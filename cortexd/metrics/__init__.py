"""Prometheus metrics (docs/protocol.md) on the daemon's own registry, and /health, /ready."""

from __future__ import annotations

from cortexd.metrics.events import Metrics, Sources
from cortexd.metrics.methods import MetricsComponent, health_document

__all__ = ["Metrics", "MetricsComponent", "Sources", "health_document"]
