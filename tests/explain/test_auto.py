"""Background explanations of new CRITICAL alerts: which alerts, how many, stored where.

The decisions (severity, event, deduplication, the hourly bound, the full
queue) are tested on the component with a stepped clock; storage, `alerts.get`
and a restart through the real daemon; the background lane with the real model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from cortexd.alerts.model import Alert, Severity
from cortexd.config.schema import Config
from cortexd.explain.auto import DEDUPE_SECONDS, HOUR, QUEUE_SIZE, AutoExplainer
from tests.daemon import DaemonProcess, running_daemon
from tests.explain.scenarios import ALL_CHECKS
from tests.inference.conftest import wait_state
from tests.notify.helpers import receiver, smtp_server

DEADLINE = 60.0
POLL = 0.05


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NoStore:
    async def put_blob(self, key: str, value: bytes) -> None:
        raise AssertionError("nothing is explained in these tests")

    async def get_blob(self, key: str) -> bytes | None:
        return None


def _component(clock: Clock, *, enabled: bool = True, per_hour: int = 2) -> AutoExplainer:
    base = Config()
    config = dataclasses.replace(
        base,
        inference=dataclasses.replace(
            base.inference, auto_explain=enabled, auto_explain_per_hour=per_hour
        ),
    )
    # The worker is not started: what was queued stays queued and is counted.
    return AutoExplainer(config, explainer=None, engine=None, store=NoStore(), clock=clock)  # type: ignore[arg-type]


def _alert(n: int, severity: Severity = Severity.CRITICAL) -> Alert:
    return Alert(
        id=f"{n:08d}-0000-4000-8000-000000000000",
        fingerprint=f"fp{n}",
        source="external",
        severity=severity,
        category="system",
        title=f"alert {n}",
        description="",
        labels={},
        annotations={},
        state="firing",
        first_seen=1.0,
        last_seen=1.0,
        count=1,
        host="test",
    )


async def test_only_new_critical_alerts_are_queued_once_per_condition() -> None:
    clock = Clock()
    auto = _component(clock, per_hour=100)
    await auto.on_alert("fired", _alert(1, Severity.ERROR))
    await auto.on_alert("updated", _alert(2))
    await auto.on_alert("acknowledged", _alert(3))
    assert auto.state()["queued"] == 0
    await auto.on_alert("fired", _alert(4))
    await auto.on_alert("escalated", _alert(5))
    await auto.on_alert("reopened", _alert(4))
    assert auto.state()["queued"] == 2
    assert auto.state()["deduplicated"] == 1
    clock.now += DEDUPE_SECONDS
    await auto.on_alert("reopened", _alert(4))
    assert auto.state()["queued"] == 3
    await auto.stop()


async def test_disabled_nothing_is_queued() -> None:
    auto = _component(Clock(), enabled=False)
    await auto.on_alert("fired", _alert(1))
    await auto.stop()
    assert auto.state() == {
        "state": "off",
        "per_hour": 2,
        "queued": 0,
        "explained": 0,
        "deduplicated": 0,
        "over_rate": 0,
        "queue_full": 0,
        "failed": 0,
    }


async def test_at_most_the_hourly_bound_and_a_full_queue_drops() -> None:
    clock = Clock()
    auto = _component(clock, per_hour=2)
    for n in range(3):
        await auto.on_alert("fired", _alert(n))
        clock.now += 60
    assert (auto.state()["queued"], auto.state()["over_rate"]) == (2, 1)
    # An hour after the first, one place is free again; the second's still counts.
    clock.now = 1000.0 + HOUR
    await auto.on_alert("fired", _alert(10))
    await auto.on_alert("fired", _alert(11))
    assert (auto.state()["queued"], auto.state()["over_rate"]) == (3, 2)
    roomy = _component(clock, per_hour=3600)
    for n in range(QUEUE_SIZE + 2):
        await roomy.on_alert("fired", _alert(100 + n))
    assert (roomy.state()["queued"], roomy.state()["queue_full"]) == (QUEUE_SIZE, 2)
    await auto.stop()
    await roomy.stop()


# -- through the daemon ---------------------------------------------------------------------


def _config(state: Path, **inference: Any) -> dict[str, Any]:
    return {
        "state_dir": str(state),
        "logs": {"watch": False},
        # No check of this host raises a CRITICAL alert that would use up the bound.
        "checks": {name: {"enabled": False} for name in ALL_CHECKS},
        "inference": {"auto_explain": True, **inference},
    }


def _raise(d: DaemonProcess, title: str, severity: str = "CRITICAL") -> dict[str, Any]:
    alert: dict[str, Any] = d.call(
        "alerts.raise",
        {"title": title, "severity": severity, "description": "down", "source": "db-watch"},
    )["alert"]
    return alert


def _cortexctl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CORTEX_SOCKET"}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", d.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=env,
        check=False,
    )


def _until(predicate: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + DEADLINE
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"never: {what}")
        time.sleep(POLL)


def _finished(d: DaemonProcess, alert_id: str) -> dict[str, Any] | None:
    """The stored explanation once the model's part is settled (written or skipped)."""
    found: dict[str, Any] | None = d.call("alerts.get", {"id": alert_id}).get("explanation")
    return found if found and found["summary_skipped"] != "being written" else None


def _auto(d: DaemonProcess) -> dict[str, Any]:
    state: dict[str, Any] = d.call("status")["components"]["auto_explain"]
    return state


def test_the_explanation_is_stored_with_the_alert_and_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_daemon(_config(state, auto_explain_per_hour=1)) as d:
        first = _raise(d, "Primary database down")
        explained = _until(
            lambda: _finished(d, first["id"]),
            "the alert is explained",
        )
        error = _raise(d, "Replica lagging", "ERROR")
        over = _raise(d, "Second database down")
        counts = _until(lambda: _auto(d) if _auto(d)["over_rate"] else None, "over the bound")
        assert "explanation" not in d.call("alerts.get", {"id": error["id"]})
        assert "explanation" not in d.call("alerts.get", {"id": over["id"]})
    assert explained["alert_id"] == first["id"]
    assert explained["fingerprint"] == first["fingerprint"]
    # The deterministic part, as `inference.explain` gives it, without the journal's lines.
    assert explained["explanation"]["entry"] == "external"
    assert explained["explanation"]["text"].startswith(
        "An alert raised by another program: Primary database down (CRITICAL, firing, alert "
    )
    assert explained["summary"] is None
    assert explained["summary_skipped"].startswith("MODEL_NOT_LOADED: ")
    assert (counts["explained"], counts["over_rate"], counts["state"]) == (1, 1, "running")
    # Without a reopen window the condition firing again is a new alert, with a new id.
    second = {**_config(state, auto_explain_per_hour=5), "alerts": {"reopen_window_seconds": 0}}
    with running_daemon(second) as d:
        assert d.call("alerts.get", {"id": first["id"][:8]})["explanation"] == explained
        # The same condition again, after the restart: the stored explanation stands.
        d.call("alerts.resolve", {"id": first["id"]})
        again = _raise(d, "Primary database down")
        assert again["fingerprint"] == first["fingerprint"] and again["id"] != first["id"]
        after = _until(lambda: _auto(d) if _auto(d)["deduplicated"] else None, "deduplicated")
        assert d.call("alerts.get", {"id": again["id"]})["explanation"] == explained
        shown = _cortexctl(d, "alerts", "show", again["id"][:8])
        as_json = _cortexctl(d, "--json", "alerts", "show", again["id"][:8])
    assert after["explained"] == 0
    assert shown.returncode == 0, shown.stderr
    head, _, tail = shown.stdout.partition("\nExplained in the background at ")
    assert again["id"] in head
    assert tail.splitlines()[0].endswith(f" (for alert {first['id'][:8]}):")
    assert "\nAn alert raised by another program: Primary database down (CRITICAL" in tail
    assert json.loads(as_json.stdout)["explanation"] == explained


@pytest.mark.slow
def test_the_summary_runs_in_the_background_lane(tmp_path: Path, model_path: str) -> None:
    config = _config(tmp_path / "state", model_path=model_path, n_threads=1)
    with running_daemon(config) as d:
        wait_state(d, {"ready"})
        alert = _raise(d, "Storage array offline")
        running = _until(lambda: d.call("model.status").get("in_flight"), "the background job runs")
        # An operator's request goes ahead of any background work still waiting.
        seen: list[Any] = []
        with d.client(DEADLINE) as client:
            client.call(
                "inference.generate",
                {"prompt": "Say hello.", "max_tokens": 4, "stream": True},
                on_stream=seen.append,
                timeout=DEADLINE,
            )
        explained = _until(
            lambda: _finished(d, alert["id"]),
            "the alert is explained",
        )
    assert running["method"] == "auto_explain" and running["priority"] == "background"
    assert seen[0]["position"] == 1
    assert explained["summary_skipped"] is None
    assert isinstance(explained["summary"], str) and explained["summary"].strip()


def test_notifications_that_ask_for_it_carry_the_deterministic_part(tmp_path: Path) -> None:
    with receiver() as hooks, smtp_server() as mail:
        url = f"http://127.0.0.1:{hooks.port}"
        actions = [
            {"type": "webhook", "url": f"{url}/with", "include_explanation": True},
            {"type": "webhook", "url": f"{url}/without"},
            {
                "type": "email",
                "to": "ops@example.com",
                "smtp_host": "127.0.0.1",
                "smtp_port": mail.port,
                "include_explanation": True,
            },
        ]
        rules = tmp_path / "alerts.yaml"
        rules.write_text(
            yaml.safe_dump(
                {"alerts": [{"name": "ops", "severity": "critical", "actions": actions}]}
            )
        )
        config = _config(tmp_path / "state")
        config["notify"] = {"rules_path": str(rules)}
        with running_daemon(config) as d:
            alert = _raise(d, "Primary database down")
            (with_it,) = hooks.wait_for(1, path="/with")
            (without,) = hooks.wait_for(1, path="/without")
            (message,) = mail.wait_for(1)
            stored = d.call("alerts.get", {"id": alert["id"]})["explanation"]
    text = stored["explanation"]["text"]
    assert text.startswith("An alert raised by another program: Primary database down (CRITICAL")
    (sent,) = json.loads(with_it.body)["alerts"]
    assert sent["annotations"]["explanation"] == text
    (plain,) = json.loads(without.body)["alerts"]
    assert "explanation" not in plain["annotations"]
    body = message.get_payload(decode=True).decode()
    assert body.replace("\r\n", "\n").endswith("\n\n" + text.rstrip("\n") + "\n")


def test_include_explanation_must_be_a_flag(tmp_path: Path) -> None:
    rules = tmp_path / "alerts.yaml"
    action = {"type": "webhook", "url": "http://127.0.0.1:9/x", "include_explanation": "yes"}
    rules.write_text(yaml.safe_dump({"alerts": [{"name": "ops", "actions": [action]}]}))
    config = _config(tmp_path / "state")
    config["notify"] = {"rules_path": str(rules)}
    with running_daemon(config, wait_ready=False) as d:
        d.wait(30)
        assert d.proc.returncode != 0
        assert (
            "rule 'ops': field 'actions[0].include_explanation': must be true or false" in d.log()
        )


class BrokenExplainers:
    """The explain modules fail to import (say, replaced under a running daemon)."""

    def __init__(self) -> None:
        self.asked = 0
        self.twice = anyio.Event()

    async def get(self) -> Any:
        self.asked += 1
        if self.asked == 2:
            self.twice.set()
        raise ImportError("cannot import name 'Explainer' from 'cortexd.explain.service'")


async def test_an_explanation_that_cannot_load_is_counted_and_the_worker_goes_on() -> None:
    base = Config()
    config = dataclasses.replace(
        base, inference=dataclasses.replace(base.inference, auto_explain=True)
    )
    broken = BrokenExplainers()
    auto = AutoExplainer(config, explainer=broken, engine=None, store=NoStore(), clock=Clock())
    async with anyio.create_task_group() as tg:
        await auto.start(tg)
        await auto.on_alert("fired", _alert(1))
        await auto.on_alert("fired", _alert(2))
        with anyio.fail_after(DEADLINE):
            await broken.twice.wait()
            await anyio.wait_all_tasks_blocked()
        assert auto.state()["failed"] == 2
        assert auto.state()["state"] == "running"
        await auto.stop()
