"""Notifier plugins in the real daemon: a plugin's action type receives real alerts
through the outbox; a raising or hanging send is that attempt's failure (retries,
dead letter with the plugin's error) while the daemon keeps serving."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.store import MIGRATIONS as ALERT_MIGRATIONS
from cortexd.config.schema import AlertsConfig, Config
from cortexd.notify.actions import ActionTypes
from cortexd.notify.notifier import Notifier
from cortexd.notify.rules import Action, parse_rules
from cortexd.notify.send import Answer, DeliveryFailed
from cortexd.notify.store import MIGRATIONS
from cortexd.protocol import ConfigError
from cortexd.store import Database
from tests.daemon import DaemonProcess, running_daemon
from tests.notify.helpers import poll
from tests.notify.test_daemon import NO_CHECKS
from tests.plugins.conftest import write_plugin

PLUGIN_TIMEOUT = 5.0

RECORDER = """
import json

def send(event, options):
    with open(options["path"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"event": event, "prefix": options.get("prefix")}) + "\\n")
    return {"written": options["path"]}
"""
FAILING = """
def send(event, options):
    raise RuntimeError("the pager is on fire")
"""
HANGING = """
import time

def send(event, options):
    time.sleep(3600)
"""
TITLE = "disk full on /srv"
RECORDER_OPTIONS = {"path": "required", "prefix": "optional"}


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    base = tmp_path / "plugins"
    base.mkdir()
    os.chmod(tmp_path, 0o755)
    write_plugin(
        base,
        "recorder",
        RECORDER,
        plugin_type="notifier",
        action_type="record",
        action_options=RECORDER_OPTIONS,
    )
    write_plugin(base, "failing", FAILING, plugin_type="notifier")
    write_plugin(base, "stuck", HANGING, plugin_type="notifier")
    return base


def config_for(tmp_path: Path, plugins: Path, rules: list[dict[str, Any]], **notify: Any) -> Any:
    rules_path = tmp_path / "alerts.yaml"
    rules_path.write_text(yaml.safe_dump({"alerts": rules}))
    return {
        **NO_CHECKS,
        "state_dir": str(tmp_path / "state"),
        "plugins": {"directory": str(plugins), "timeout_seconds": PLUGIN_TIMEOUT},
        "notify": {
            "rules_path": str(rules_path),
            "rate_limit_per_minute": 1000,
            "backoff_seconds": 0.05,
            "backoff_max_seconds": 0.1,
            **notify,
        },
    }


def received(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def raise_alert(d: DaemonProcess, title: str) -> None:
    d.call("alerts.raise", {"title": title, "severity": "ERROR", "labels": {"job": title}})


def dead_letters(d: DaemonProcess, action: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = d.call("deadletter.list", {"action": action})["dead_letters"]
    return found


def test_a_notifier_plugin_receives_real_alerts_and_notify_test(
    tmp_path: Path, plugin_dir: Path
) -> None:
    got = tmp_path / "got.jsonl"
    action = {"type": "record", "name": "ops.file", "path": str(got), "prefix": "[ops]"}
    config = config_for(tmp_path, plugin_dir, [{"name": "ops", "actions": [action]}])
    with running_daemon(config) as d:
        listed = {p["name"]: p for p in d.call("plugins.list")["plugins"]}
        assert listed["recorder"]["status"] == "loaded"
        assert listed["recorder"]["action_type"] == "record"
        assert listed["failing"]["action_type"] == "failing"  # the name when none is given
        notify = d.call("status")["components"]["notify"]
        assert "record" in notify["action_types"]
        assert notify["rules_errors"] == []

        raise_alert(d, TITLE)
        # The rule matches every alert; a loaded machine may raise its own ones too.
        lines = poll(
            lambda: [line for line in received(got) if line["event"]["alert"]["title"] == TITLE],
            what="the alert in the plugin's file",
        )
        event = lines[0]["event"]
        assert event["kind"] == "firing"
        assert event["action"] == "ops.file"
        assert lines[0]["prefix"] == "[ops]"
        done = poll(
            lambda: [
                e
                for e in d.call("notify.history", {"since": 0})["notifications"]
                if e["status"] == "completed" and e["event"]["alert"]["title"] == TITLE
            ],
            what="a completed entry",
        )
        assert done[0]["action"] == "ops.file"

        answer = d.call("notify.test", {"action": "ops.file"})
        assert answer["delivered"] is True, answer
        assert answer["type"] == "record"
        assert str(got) in answer["answer"]
        titles = [line["event"]["alert"]["title"] for line in received(got)]
        assert "test notification from cortexd" in titles
        assert d.stop() == 0
        # Unloading the plugins at shutdown is no reason to complain about the rules.
        assert "notify rules not reloaded" not in d.log()


def test_raising_and_hanging_sends_fail_into_dead_letters(tmp_path: Path, plugin_dir: Path) -> None:
    rules = [
        {"name": "page", "actions": [{"type": "failing"}]},
        {"name": "slow", "actions": [{"type": "stuck"}]},
    ]
    config = config_for(tmp_path, plugin_dir, rules, max_attempts=2)
    with running_daemon(config) as d:
        raise_alert(d, "database down")
        dead = poll(lambda: dead_letters(d, "page.failing"), what="the failing dead letter")
        assert dead[0]["attempts"] == 2
        assert "plugin failing: RuntimeError: the pager is on fire" in dead[0]["last_error"]

        # The hanging send is killed at the plugin timeout; the daemon answers meanwhile.
        assert d.call("status")["components"]["plugins"]["state"] == "running"
        stuck = poll(lambda: dead_letters(d, "slow.stuck"), what="the hanging dead letter")
        assert stuck[0]["attempts"] == 2
        assert f"timed out after {PLUGIN_TIMEOUT:g}s (worker killed)" in stuck[0]["last_error"]

        answer = d.call("notify.test", {"action": "slow.stuck"})
        assert answer["delivered"] is False
        assert "worker killed" in answer["error"]
        assert d.call("ping") is not None


def test_a_missing_plugin_type_is_reported_and_fails_deliveries_clearly(
    tmp_path: Path, plugin_dir: Path
) -> None:
    got = tmp_path / "got.jsonl"
    rules = [
        {"name": "ops", "actions": [{"type": "record", "path": str(got)}]},
        {"name": "gone", "actions": [{"type": "nosuch"}]},
    ]
    config = config_for(tmp_path, plugin_dir, rules, max_attempts=1)
    with running_daemon(config) as d:
        errors = poll(
            lambda: d.call("status")["components"]["notify"]["rules_errors"],
            what="the rules error",
        )
        assert any(
            "rule 'gone': field 'actions[0].type'" in e and "'nosuch' is not a known type" in e
            for e in errors
        ), errors
        raise_alert(d, "first")
        dead = poll(lambda: dead_letters(d, "gone.nosuch"), what="the unregistered dead letter")
        assert "action type 'nosuch' is not registered" in dead[0]["last_error"]
        poll(lambda: received(got), what="the recorder's delivery")

        # Disabling the plugin unregisters its type; enabling registers it again.
        d.call("plugins.disable", {"name": "recorder"})
        assert "record" not in d.call("status")["components"]["notify"]["action_types"]
        raise_alert(d, "second")
        dead = poll(lambda: dead_letters(d, "ops.record"), what="the disabled dead letter")
        assert "action type 'record' is not registered" in dead[0]["last_error"]
        d.call("plugins.enable", {"name": "recorder"})
        raise_alert(d, "third")
        poll(
            lambda: "third" in [line["event"]["alert"]["title"] for line in received(got)],
            what="delivery after enable",
        )


def _types_with_recorder() -> ActionTypes:
    def validate(options: Any) -> list[tuple[str, str]]:
        return [] if "path" in options else [("path", "required for a record action")]

    def send(action: Any, event: dict[str, Any], entry_id: int | str, timeout: float) -> Answer:
        return Answer(0, "")

    types = ActionTypes()
    types.register_action_type("record", validate, send, owner="plugin recorder")
    return types


def test_rules_validate_plugin_actions_naming_rule_and_field() -> None:
    types = _types_with_recorder()
    good = {"alerts": [{"name": "ops", "actions": [{"type": "record", "path": "/tmp/x"}]}]}
    assert parse_rules(good, types=types).actions["ops.record"].type == "record"
    bad = {"alerts": [{"name": "ops", "actions": [{"type": "record"}, {"type": "sms"}]}]}
    with pytest.raises(ConfigError) as raised:
        parse_rules(bad, types=types)
    text = "\n".join(raised.value.errors)
    assert "rule 'ops': field 'actions[0].path': required for a record action" in text
    assert "rule 'ops': field 'actions[1].type': must be one of webhook" in text
    assert "record ('sms' is not a known type)" in text
    with pytest.raises(ValueError, match="built in"):
        types.register_action_type("webhook", lambda o: [], lambda *a: Answer(0, ""))
    with pytest.raises(ValueError, match="registered by plugin recorder"):
        types.register_action_type("record", lambda o: [], lambda *a: Answer(0, ""), owner="x")


def test_rules_wait_for_types_announced_but_not_loaded() -> None:
    types = ActionTypes()
    types.hold()
    rules = {"alerts": [{"name": "ops", "actions": [{"type": "later", "to": "x"}]}]}
    assert parse_rules(rules, types=types).actions["ops.later"].type == "later"
    seen: list[bool] = []
    types.listeners.append(lambda: seen.append(types.settled))
    types.release()
    assert seen == [True]
    with pytest.raises(ConfigError):
        parse_rules(rules, types=types)


async def test_a_delivery_waits_out_a_reload_of_the_action_types(tmp_path: Path) -> None:
    types = ActionTypes()
    types.hold()  # as a plugin reload does
    alerts = AlertManager(
        Database(str(tmp_path / "alerts.db"), ALERT_MIGRATIONS), AlertsConfig(), host="web1"
    )
    notifier = Notifier(
        Database(str(tmp_path / "notify.db"), MIGRATIONS), Config(), alerts, action_types=types
    )
    action = Action("ops.record", "record", {}, "ops")

    async def register_later() -> None:
        await anyio.sleep(0.2)
        types.register_action_type("record", lambda o: [], lambda *a: Answer(0, "late"))
        types.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(register_later)
        answer = await notifier.send(action, {}, 1)
    assert answer.text == "late"

    types.unregister_action_type("record")
    with pytest.raises(DeliveryFailed, match="action type 'record' is not registered"):
        await notifier.send(action, {}, 2)
