"""The metrics say what happened: active alerts, open connections, pending notifications.

Values, not only the format: each is driven by the test and read back from the
real daemon's exposition (inference requests and tokens are checked against
the real model in tests/inference/test_generate.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from cortexd.config.schema import ChecksConfig
from tests.daemon import DaemonProcess, running_daemon
from tests.metrics.helpers import promtool, sample
from tests.notify.helpers import free_port, poll

NO_CHECKS = {f.name: {"enabled": False} for f in dataclasses.fields(ChecksConfig)}


def metrics(d: DaemonProcess) -> str:
    text: str = d.call("metrics")["text"]
    return text


def raise_alert(d: DaemonProcess, n: int, severity: str) -> dict[str, Any]:
    params = {"title": f"job {n} failed", "severity": severity, "labels": {"job": f"j{n}"}}
    alert: dict[str, Any] = d.call("alerts.raise", params)["alert"]
    return alert


def test_alerts_connections_and_pending_notifications_are_counted(tmp_path: Path) -> None:
    # Nothing listens on the webhook's port and retries wait long: every
    # notification stays pending in the outbox while the test reads it.
    rules = tmp_path / "alerts.yaml"
    hook = {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook"}
    rules.write_text(yaml.safe_dump({"alerts": [{"name": "ops", "actions": [hook]}]}))
    config = {
        "checks": NO_CHECKS,
        "notify": {
            "rules_path": str(rules),
            "rate_limit_per_minute": 1000,
            "backoff_seconds": 600,
            "backoff_max_seconds": 600,
            "max_attempts": 10,
        },
    }
    with running_daemon(config) as d:
        text = metrics(d)
        assert sample(text, "cortex_alerts_firing") == 0
        assert sample(text, "cortex_notifications_pending") == 0

        first = raise_alert(d, 1, "ERROR")
        raise_alert(d, 2, "ERROR")
        raise_alert(d, 3, "WARNING")
        d.call("alerts.ack", {"id": first["id"]})
        text = metrics(d)
        promtool(text)
        assert sample(text, 'cortex_alerts_active{severity="error"}') == 2
        assert sample(text, 'cortex_alerts_active{severity="warning"}') == 1
        assert sample(text, "cortex_alerts_firing") == 2  # the acknowledged one is not
        poll(
            lambda: sample(metrics(d), "cortex_notifications_pending") == 3,
            what="one pending notification per raised alert",
        )

        with contextlib.ExitStack() as held:
            clients = [held.enter_context(d.client()) for _ in range(3)]
            for client in clients:
                client.call("ping")
            # The three held, and the one asking.
            assert sample(metrics(d), "cortex_connections") == 4
        poll(
            lambda: sample(metrics(d), "cortex_connections") == 1,
            what="the held connections closed",
        )
