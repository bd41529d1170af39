"""Notifications in the real daemon: crash safety, the CLI, and a real Alertmanager."""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from cortexctl.cli import main as cortexctl
from cortexd.config.schema import ChecksConfig
from tests.daemon import DaemonProcess, running_daemon
from tests.notify.helpers import ALERTMANAGER, free_port, poll, receiver, smtp_server
from tests.notify.helpers import alertmanager as real_alertmanager

ALL_CHECKS = [f.name for f in dataclasses.fields(ChecksConfig)]
NO_CHECKS = {"checks": {name: {"enabled": False} for name in ALL_CHECKS}}
AMTOOL = shutil.which("amtool")


def write_rules(directory: Path, actions: list[dict[str, Any]], **conditions: Any) -> str:
    path = directory / "alerts.yaml"
    rule = {"name": "ops", **conditions, "actions": actions}
    path.write_text(yaml.safe_dump({"alerts": [rule]}))
    return str(path)


def daemon_config(state_dir: Path, rules_path: str, **notify: Any) -> dict[str, Any]:
    # A deep copy: a test that turns one check on must not turn it on for the next.
    return {
        **copy.deepcopy(NO_CHECKS),
        "state_dir": str(state_dir),
        "notify": {"rules_path": rules_path, "rate_limit_per_minute": 1000, **notify},
    }


def raise_alert(d: DaemonProcess, n: int) -> dict[str, Any]:
    params = {"title": f"job {n} failed", "severity": "ERROR", "labels": {"job": f"j{n}"}}
    alert: dict[str, Any] = d.call("alerts.raise", params)["alert"]
    return alert


def history(d: DaemonProcess) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = d.call("notify.history", {"since": 0, "limit": 1000})[
        "notifications"
    ]
    return found


def cli(d: DaemonProcess, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cortexctl(["--socket", d.socket_path, *args], stdout=out)
    return code, out.getvalue()


@pytest.mark.slow
def test_kill_9_with_pending_notifications_loses_none_and_repeats_none(tmp_path: Path) -> None:
    port = free_port()  # nothing listens yet: every attempt is refused
    rules = write_rules(tmp_path, [{"type": "webhook", "url": f"http://127.0.0.1:{port}/hook"}])
    config = daemon_config(
        tmp_path / "state", rules, backoff_seconds=0.5, backoff_max_seconds=1, max_attempts=50
    )
    count = 12
    with running_daemon(config) as d:
        for n in range(count):
            raise_alert(d, n)

        def all_pending() -> bool:
            entries = history(d)
            return len(entries) == count and all(
                e["status"] == "pending" and e["attempts"] >= 1 for e in entries
            )

        poll(all_pending, what="every entry pending after a failed attempt")
        os.killpg(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)

    with receiver(port=port) as recv, running_daemon(config) as d:
        posts = recv.wait_for(count)
        poll(
            lambda: all(e["status"] == "completed" for e in history(d)),
            what="all entries completed",
        )
        ids = [p.headers["X-Cortex-Notification-Id"] for p in recv.posts]
        assert len(ids) == len(set(ids)) == count
        titles = sorted(p.json()["alerts"][0]["annotations"]["summary"] for p in posts)
        assert titles == sorted(f"job {n} failed" for n in range(count))
        assert d.call("deadletter.list")["dead_letters"] == []


def test_cli_test_history_and_dead_letters(tmp_path: Path) -> None:
    port = free_port()
    rules = write_rules(tmp_path, [{"type": "webhook", "url": f"http://127.0.0.1:{port}/x"}])
    config = daemon_config(tmp_path / "state", rules, max_attempts=1)
    with running_daemon(config) as d:
        code, text = cli(d, "notify", "test", "ops.webhook")
        assert code == 1
        assert "NOT delivered" in text
        assert "Connection refused" in text
        raise_alert(d, 1)
        poll(lambda: d.call("deadletter.list")["dead_letters"], what="a dead letter")
        code, text = cli(d, "dead-letter", "list", "--queue", "ops.webhook", "--since", "7d")
        assert code == 0
        assert "ops.webhook" in text and "after 1 attempts" in text
        dead_id = d.call("deadletter.list")["dead_letters"][0]["id"]
        code, text = cli(d, "dead-letter", "show", str(dead_id))
        assert "ERROR job 1 failed" in text
        code, text = cli(d, "notify", "history", "--since", "24h")
        assert "failed" in text and "job 1 failed" in text

        with receiver(port=port) as recv:
            code, text = cli(d, "notify", "test", "ops.webhook")
            assert code == 0, text
            assert "delivered, answer 200" in text
            assert recv.wait_for(1)[0].json()["alerts"][0]["labels"]["alertname"] == "notify_test"
            code, text = cli(d, "dead-letter", "retry", "--all")
            assert (code, text.strip()) == (0, "queued 1 dead letter(s) again")
            recv.wait_for(2)
        assert d.call("deadletter.list")["dead_letters"] == []
        code, text = cli(d, "dead-letter", "purge", "--older-than", "30d")
        assert (code, text.strip()) == (0, "purged 0 dead letter(s)")


def test_an_external_url_that_is_not_http_stops_the_start(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, [{"type": "webhook", "url": "http://127.0.0.1:9/x"}])
    config = daemon_config(tmp_path / "state", rules, external_url="cortexd://web1")
    with running_daemon(config, wait_ready=False) as d:
        assert d.wait(30) != 0
        assert "notify.external_url: must be an http:// or https:// URL" in d.log()


def test_invalid_rules_stop_the_start_with_the_rule_and_field_named(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, [{"type": "webhook"}])
    with running_daemon(daemon_config(tmp_path / "state", rules), wait_ready=False) as d:
        d.wait(30)
        assert d.proc.returncode == 2  # invalid configuration, as for daemon.conf
        assert "rule 'ops': field 'actions[0].url': required for a webhook action" in d.log()


def test_the_keep_alive_pushes_an_actions_firing_alerts_together(tmp_path: Path) -> None:
    """Each firing alert goes to Alertmanager once when it fires; the keep-alive
    that stops them expiring there then sends all of them in one request."""
    with receiver() as am:
        rules = write_rules(tmp_path, [{"type": "alertmanager", "url": am.url("")}])
        config = daemon_config(tmp_path / "state", rules, alertmanager_resend_seconds=1)
        with running_daemon(config) as d:
            for n in range(3):
                raise_alert(d, n)

            def together() -> list[Any]:
                return [p.json() for p in am.posts if len(p.json()) == 3]

            pushed = poll(together, what="one keep-alive push with all three alerts")[0]
        assert all(p.path == "/api/v2/alerts" for p in am.posts)
        assert sorted(a["labels"]["job"] for a in pushed) == ["j0", "j1", "j2"]
        # Each still firing: an end in the future, which the next keep-alive moves on.
        assert all(a["endsAt"] > a["startsAt"] for a in pushed)
        singles = [p for p in am.posts if len(p.json()) == 1]
        assert len(singles) >= 3  # the first push of each, through the outbox


# -- a filled disk reaches a webhook, an SMTP server and a real Alertmanager ----------


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager is not installed (make deps installs it)")
    home = tmp_path / "am"
    home.mkdir()
    with real_alertmanager(home) as am:
        yield am.url


def am_alerts(url: str, mount: Path) -> list[dict[str, Any]]:
    """The alerts Alertmanager itself holds (active ones) about `mount`."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        found: list[dict[str, Any]] = orjson.loads(response.read())
    return [a for a in found if a["labels"].get("mountpoint") == str(mount)]


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="cxnt", dir="/tmp"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


@pytest.mark.root
@pytest.mark.slow
def test_a_filled_disk_reaches_webhook_mail_and_alertmanager_then_resolves(
    tmp_path: Path, tmpfs: Path, alertmanager: str
) -> None:
    with receiver() as hook, smtp_server() as smtp:
        example = yaml.safe_load(
            (Path(__file__).resolve().parents[2] / "config" / "alerts.yaml").read_text()
        )
        (disk_rule,) = [r for r in example["alerts"] if r["name"] == "disk-critical"]
        for action in disk_rule["actions"]:
            action.update(
                {
                    "webhook": {"url": hook.url("/hooks/cortex")},
                    "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp.port},
                    "alertmanager": {"url": alertmanager},
                }[action["type"]]
            )
        rules = tmp_path / "alerts.yaml"
        rules.write_text(yaml.safe_dump({"alerts": [disk_rule]}))
        config = daemon_config(tmp_path / "state", str(rules), backoff_seconds=0.2)
        config["checks"]["disk_space"] = {"include": [str(tmpfs)], "interval_seconds": 0.2}
        with running_daemon(config) as d:
            (tmpfs / "ballast").write_bytes(b"\0" * int(4 * 1024 * 1024 * 0.97))
            (fired,) = hook.wait_for(1)
            body = fired.json()
            labels = body["alerts"][0]["labels"]
            assert body["status"] == "firing"
            assert labels["mountpoint"] == str(tmpfs)
            assert labels["instance"] == socket.gethostname()
            assert labels["severity"] in ("error", "critical")
            (mail,) = smtp.wait_for(1)
            assert str(tmpfs) in mail.get_payload()
            active = poll(
                lambda: am_alerts(alertmanager, tmpfs),
                what="the alert in Alertmanager",
            )
            assert active[0]["status"]["state"] == "active"
            assert active[0]["labels"]["instance"] == socket.gethostname()

            (tmpfs / "ballast").unlink()
            resolved = hook.wait_for(2)[1].json()
            assert resolved["status"] == "resolved"
            smtp.wait_for(2)
            assert "[RESOLVED]" in smtp.wait_for(2)[1]["Subject"]
            poll(
                lambda: not am_alerts(alertmanager, tmpfs),
                what="Alertmanager to drop the resolved alert",
            )
            sent = {e["action"]: e["status"] for e in history(d)}
            assert set(sent.values()) == {"completed"}


def amtool_active(url: str, name: str) -> list[dict[str, Any]]:
    """The active alerts named `name` as `amtool alert query` lists them."""
    done = subprocess.run(
        [AMTOOL or "amtool", f"--alertmanager.url={url}", "-o", "json", "alert", "query", name],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    found: list[dict[str, Any]] = orjson.loads(done.stdout or "[]")
    return [a for a in found if a["status"]["state"] == "active"]


@pytest.mark.slow
def test_alertmanager_holds_one_copy_across_an_escalation_and_none_after(
    tmp_path: Path, alertmanager: str
) -> None:
    if AMTOOL is None:
        pytest.skip("amtool is not installed (it comes with prometheus-alertmanager)")
    rules = write_rules(tmp_path, [{"type": "alertmanager", "url": alertmanager}])
    config = daemon_config(tmp_path / "state", rules, cooldown_seconds=0)
    params = {"key": "raid", "name": "raid_degraded", "title": "RAID degraded"}
    with running_daemon(config) as d:
        d.call("alerts.raise", {**params, "severity": "WARNING"})
        first = poll(lambda: amtool_active(alertmanager, "raid_degraded"), what="the alert")
        assert [a["labels"]["severity"] for a in first] == ["warning"]
        assert first[0].get("generatorURL", "") == ""  # no http(s) URL configured: no link
        d.call("alerts.raise", {**params, "severity": "CRITICAL"})

        def escalated() -> list[dict[str, Any]]:
            found = amtool_active(alertmanager, "raid_degraded")
            return found if [a["labels"]["severity"] for a in found] == ["critical"] else []

        # Exactly one active copy, at the new severity: the warning ended in the same push.
        (one,) = poll(escalated, what="one critical copy")
        assert one["labels"]["instance"] == socket.gethostname()
        d.call("alerts.resolve", {"key": "raid"})
        poll(lambda: not amtool_active(alertmanager, "raid_degraded"), what="none active")


def test_pagerduty_gets_one_dedup_key_per_alert(tmp_path: Path) -> None:
    with receiver() as pd:
        action = {"type": "pagerduty", "routing_key": "rk", "url": pd.url("/v2/enqueue")}
        rules = write_rules(tmp_path, [action])
        config = daemon_config(tmp_path / "state", rules, cooldown_seconds=0)
        with running_daemon(config) as d:
            for severity in ("WARNING", "CRITICAL"):
                d.call("alerts.raise", {"key": "raid", "title": "RAID", "severity": severity})
            d.call("alerts.raise", {"key": "other", "title": "fan", "severity": "ERROR"})
            d.call("alerts.resolve", {"key": "raid"})

            def events() -> list[dict[str, Any]]:
                # Delivery is at least once: a receiver drops repeats by notification id.
                # Only this test's alerts: the host may have its own (repair's checks run).
                seen = {p.headers["X-Cortex-Notification-Id"]: p.json() for p in pd.posts}
                ours = ("RAID", "fan")
                return [e for e in seen.values() if any(w in e["payload"]["summary"] for w in ours)]

            poll(lambda: len(events()) == 4, what="four PagerDuty events")
        raid = [e for e in events() if "RAID" in e["payload"]["summary"]]
        assert [(e["event_action"], e["payload"]["severity"]) for e in raid] == [
            ("trigger", "warning"),
            ("trigger", "critical"),
            ("resolve", "critical"),
        ]
        assert len({e["dedup_key"] for e in raid}) == 1
        assert len({e["dedup_key"] for e in events()}) == 2
