"""The request counters `status` and the metrics show (`ServerStats`)."""

from __future__ import annotations

import orjson

from cortexd.server.stats import ServerStats


def test_methods_are_listed_in_name_order_with_their_errors_sorted() -> None:
    stats = ServerStats()
    for method, error in [
        ("status", None),
        ("ping", None),
        ("alerts.list", "NOT_FOUND"),
        ("ping", None),
        ("alerts.list", "INVALID_PARAMS"),
        ("alerts.list", "NOT_FOUND"),
    ]:
        stats.record(method, error, 0.001)

    snapshot = stats.snapshot()
    # Encoded as `status` encodes it: the order a reader sees is the order kept.
    assert orjson.loads(orjson.dumps(snapshot["methods"])) == {
        "alerts.list": {"requests": 3, "errors": {"INVALID_PARAMS": 1, "NOT_FOUND": 2}},
        "ping": {"requests": 2, "errors": {}},
        "status": {"requests": 1, "errors": {}},
    }
    methods = snapshot["methods"]
    assert isinstance(methods, dict)
    assert list(methods) == ["alerts.list", "ping", "status"]
    assert list(methods["alerts.list"]["errors"]) == ["INVALID_PARAMS", "NOT_FOUND"]
    assert snapshot["requests_total"] == 6
    assert snapshot["errors_total"] == 3


def test_a_snapshot_does_not_move_with_later_requests() -> None:
    # `status` is encoded after its own request is counted (and a batch's
    # answers later still): what it shows must be the counts when it was asked.
    stats = ServerStats()
    stats.record("ping", None, 0.001)
    snapshot = stats.snapshot()
    stats.record("ping", "TIMEOUT", 0.001)
    stats.record("version", None, 0.001)

    assert orjson.loads(orjson.dumps(snapshot)) == {
        "connections_open": 0,
        "connections_total": 0,
        "connections_refused": 0,
        "requests_total": 1,
        "errors_total": 0,
        "methods": {"ping": {"requests": 1, "errors": {}}},
    }
    assert stats.snapshot()["methods"] == {
        "ping": {"requests": 2, "errors": {"TIMEOUT": 1}},
        "version": {"requests": 1, "errors": {}},
    }


def test_the_metrics_read_the_same_counts() -> None:
    stats = ServerStats()
    for _ in range(3):
        stats.record("health", None, 0.002)
    stats.record("health", "UNAVAILABLE", 0.004)

    assert stats.requests == {"health": 4}
    assert stats.errors == {("health", "UNAVAILABLE"): 1}
    assert abs(stats.latency_sum["health"] - 0.010) < 1e-9
