"""Alerts over the real socket: bad params, the CLI, and surviving `kill -9`."""

from __future__ import annotations

import dataclasses
import io
import os
import sqlite3
import threading
from typing import Any

import orjson
import pytest

from cortexctl.cli import main as cortexctl
from cortexctl.client import Client, DaemonUnreachable
from cortexd.alerts.methods import alert_methods
from cortexd.config.schema import ChecksConfig
from cortexd.protocol import CortexError, InvalidParams, NotFound
from tests.daemon import DaemonProcess, running_daemon

# Keep the monitor quiet: these tests are about alerts raised over the socket.
QUIET = {"checks": {f.name: {"enabled": False} for f in dataclasses.fields(ChecksConfig)}}

BAD_PARAMS: list[tuple[str, dict[str, Any], str]] = [
    ("alerts.list", {"severity": "loud"}, "severity"),
    ("alerts.list", {"state": "sleeping"}, "state"),
    ("alerts.list", {"category": "weather"}, "category"),
    ("alerts.list", {"since": "yesterday"}, "since"),
    ("alerts.list", {"limit": 0}, "limit"),
    ("alerts.list", {"limit": True}, "limit"),
    ("alerts.list", {"colour": "red"}, "colour"),
    ("alerts", {"limit": 10_001}, "limit"),
    ("alerts.get", {}, "id"),
    ("alerts.get", {"id": 7}, "id"),
    ("alerts.ack", {}, "id"),
    ("alerts.ack", {"all": False}, "id"),
    ("alerts.ack", {"id": "x", "all": True}, "all"),
    ("alerts.ack", {"id": "x", "severity": "INFO"}, "id"),
    ("alerts.ack", {"all": "yes"}, "all"),
    ("acknowledge_alert", {"alert_id": 3}, "id"),
    ("alerts.resolve", {}, "id"),
    ("alerts.resolve", {"source": "external"}, "id"),
    ("alerts.clear", {"force": True}, "force"),
    ("alerts.raise", {}, "title"),
    ("alerts.raise", {"title": ""}, "title"),
    ("alerts.raise", {"title": "t", "severity": "HUGE"}, "severity"),
    ("alerts.raise", {"title": "t", "labels": {"a": 1}}, "labels"),
    ("alerts.raise", {"title": "t", "labels": "a=b"}, "labels"),
    ("alerts.raise", {"title": "t", "category": "weather"}, "category"),
    ("alerts.raise", {"title": "t", "name": "Backup Failed"}, "name"),
    ("alerts.raise", {"title": "t", "name": "9lives"}, "name"),
    ("alerts.raise", {"title": "t", "name": ""}, "name"),
    ("alerts.raise", {"title": "t", "key": ""}, "key"),
    ("alerts.raise", {"title": "t", "key": "k" * 257}, "key"),
    ("alerts.raise", {"title": "t", "key": 7}, "key"),
    ("alerts.raise", {"title": "t", "ttl_seconds": 0}, "ttl_seconds"),
    ("alerts.raise", {"title": "t", "ttl_seconds": -5}, "ttl_seconds"),
    ("alerts.raise", {"title": "t", "ttl_seconds": 1e12}, "ttl_seconds"),
    ("alerts.raise", {"title": "t", "ttl_seconds": "1h"}, "ttl_seconds"),
    ("alerts.resolve", {"id": "x", "key": "k"}, "id"),
    ("alerts.resolve", {"key": ""}, "key"),
    ("alerts.silence", {"duration_seconds": 60}, "matchers"),
    ("alerts.silence", {"matchers": [], "duration_seconds": 60}, "matchers"),
    ("alerts.silence", {"matchers": ['a=~"("'], "duration_seconds": 60}, "matchers"),
    ("alerts.silence", {"matchers": ['a="b"'], "duration_seconds": 0}, "duration_seconds"),
    ("alerts.silence", {"matchers": ['a="b"']}, "duration_seconds"),
    ("silences.list", {"all": 1}, "all"),
    ("silences.delete", {}, "id"),
    ("health", {"verbose": True}, "verbose"),
    ("checks.list", {"x": 1}, "x"),
    ("checks.run", {"ids": "disk_space"}, "ids"),
    ("checks.run", {"ids": ["no_such_check"]}, "ids"),
    ("checks.run", {"category": "weather"}, "category"),
]


@pytest.fixture(scope="module")
def quiet_daemon() -> Any:
    with running_daemon(QUIET) as d:
        yield d


@pytest.mark.parametrize(("method", "params", "param"), BAD_PARAMS)
def test_bad_params_name_the_param(
    quiet_daemon: DaemonProcess, method: str, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidParams) as caught:
        quiet_daemon.call(method, params)
    assert caught.value.data["param"] == param


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("alerts.get", {"id": "nope"}),
        ("alerts.ack", {"id": "nope"}),
        ("alerts.resolve", {"id": "nope"}),
        ("alerts.resolve", {"key": "never-raised"}),
        ("silences.delete", {"id": "nope"}),
    ],
)
def test_unknown_ids_are_not_found(
    quiet_daemon: DaemonProcess, method: str, params: dict[str, Any]
) -> None:
    with pytest.raises(NotFound):
        quiet_daemon.call(method, params)


def test_mutating_methods_need_admin() -> None:
    access = {m.name: m.access for m in alert_methods(None)}  # type: ignore[arg-type]
    for name in ("alerts.ack", "alerts.resolve", "alerts.clear", "alerts.raise"):
        assert access[name] == "admin"
    for name in ("alerts.silence", "silences.delete"):
        assert access[name] == "admin"
    assert access["alerts.list"] == access["silences.list"] == "read"


def cli(d: DaemonProcess, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cortexctl(["--socket", d.socket_path, *args], stdout=out)
    return code, out.getvalue()


def test_cli_send_list_ack_silence_resolve_clear(quiet_daemon: DaemonProcess) -> None:
    code, text = cli(
        quiet_daemon,
        "alerts",
        "send",
        "--level",
        "critical",
        "--message",
        "backup failed",
        "--label",
        "job=nightly",
    )
    assert code == 0, text
    code, text = cli(quiet_daemon, "--json", "alerts", "list", "--severity", "CRITICAL")
    (alert,) = [a for a in orjson.loads(text)["alerts"] if a["labels"] == {"job": "nightly"}]
    assert alert["title"] == "backup failed" and alert["source"] == "external"
    # Raising it again refreshes the same alert.
    cli(
        quiet_daemon,
        "alerts",
        "send",
        "--level",
        "critical",
        "-m",
        "backup failed",
        "--label",
        "job=nightly",
    )
    assert quiet_daemon.call("alerts.get", {"id": alert["id"]})["alert"]["count"] == 2

    assert cli(quiet_daemon, "alerts", "ack")[0] == 1  # neither id nor --all: refused
    code, text = cli(quiet_daemon, "alerts", "silence", "add", 'job="nightly"', "--for", "2h")
    assert code == 0, text
    assert quiet_daemon.call("alerts.get", {"id": alert["id"]})["alert"]["silenced"] is True
    silences = quiet_daemon.call("silences.list")["silences"]
    assert len(silences) == 1 and silences[0]["ends_at"] - silences[0]["created_at"] == 7200
    assert cli(quiet_daemon, "alerts", "silence", "rm", silences[0]["id"])[0] == 0
    assert quiet_daemon.call("silences.list")["silences"] == []

    code, text = cli(quiet_daemon, "alerts", "ack", alert["id"][:8])
    assert code == 0 and "acknowledged 1" in text, text
    code, text = cli(quiet_daemon, "alerts", "show", alert["id"])
    assert "acknowledged" in text and "uid 0" in text
    assert cli(quiet_daemon, "alerts", "resolve", alert["id"])[0] == 0
    code, text = cli(quiet_daemon, "alerts", "clear")
    assert code == 0 and "cleared" in text
    listed = quiet_daemon.call("alerts.list", {"state": "all"})["alerts"]
    assert alert["id"] not in [a["id"] for a in listed]
    assert quiet_daemon.call("clear_acknowledged_alerts") == {"cleared": 0}


def test_alerts_survive_kill_9_during_a_burst_of_updates() -> None:
    with running_daemon(QUIET) as first:
        ids = [
            first.call(
                "alerts.raise",
                {"title": f"job {i}", "labels": {"job": str(i)}, "severity": "ERROR"},
            )["alert"]["id"]
            for i in range(20)
        ]
        acked = ids[::2]
        for alert_id in acked:
            first.call("alerts.ack", {"id": alert_id})

        stop = threading.Event()
        sent = [0]

        def burst() -> None:
            try:
                with Client(first.socket_path, timeout=5) as client:
                    while not stop.is_set():
                        i = sent[0] % 40
                        client.call(
                            "alerts.raise",
                            {"title": f"job {i}", "labels": {"job": str(i)}, "severity": "ERROR"},
                        )
                        sent[0] += 1
            except (DaemonUnreachable, CortexError, OSError, TimeoutError):
                pass  # the daemon was killed under us: expected

        workers = [threading.Thread(target=burst) for _ in range(3)]
        for worker in workers:
            worker.start()
        while sent[0] < 200:
            threading.Event().wait(0.01)
        first.proc.kill()
        first.proc.wait(10)
        stop.set()
        for worker in workers:
            worker.join(10)

        db = os.path.join(first.state_dir, "alerts.db")
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()

        with running_daemon({**QUIET, "state_dir": first.state_dir}) as second:
            listed = second.call("alerts.list", {"state": "all", "limit": 1000})["alerts"]
            by_id = {a["id"]: a for a in listed}
            assert all(by_id[i]["state"] == "acknowledged" for i in acked)
            jobs = [a["labels"]["job"] for a in listed]
            assert len(jobs) == len(set(jobs))  # one alert per condition
            again = second.call(
                "alerts.raise", {"title": "job 0", "labels": {"job": "0"}, "severity": "ERROR"}
            )["alert"]
            assert again["id"] == ids[0]
            assert again["state"] == "acknowledged"


def test_identity_is_the_key_else_source_labels_and_title(quiet_daemon: DaemonProcess) -> None:
    # Two titles from one script: two alerts, each keeping its own level and alertname.
    cli(quiet_daemon, "alerts", "send", "--level", "error", "-m", "Backup job failed")
    cli(quiet_daemon, "alerts", "send", "--level", "warning", "-m", "Certificate expires in 3 days")
    listed = quiet_daemon.call("alerts.list", {"limit": 1000})["alerts"]
    by_title = {a["title"]: a for a in listed}
    assert by_title["Backup job failed"]["severity"] == "ERROR"
    assert by_title["Backup job failed"]["name"] == "backup_job_failed"
    assert by_title["Certificate expires in 3 days"]["severity"] == "WARNING"
    assert by_title["Certificate expires in 3 days"]["name"] == "certificate_expires_in_3_days"

    # One alert raised and then updated twice by its key: title and level change in place.
    sends = [("warning", "nightly backup is late"), ("error", "nightly backup failed")]
    sends.append(("error", "nightly backup failed twice"))
    for level, title in sends:
        code, text = cli(
            quiet_daemon,
            *("--json", "alerts", "send", "--key", "backup-nightly", "--name", "backup_nightly"),
            *("--level", level, "-m", title),
        )
        assert code == 0, text
        alert = orjson.loads(text)
    assert (alert["count"], alert["title"], alert["severity"]) == (3, sends[-1][1], "ERROR")
    assert (alert["key"], alert["name"]) == ("backup-nightly", "backup_nightly")
    keyed = [a for a in quiet_daemon.call("alerts.list", {"limit": 1000})["alerts"] if a["key"]]
    assert [a["id"] for a in keyed] == [alert["id"]]
    code, text = cli(quiet_daemon, "alerts", "resolve", "--key", "backup-nightly")
    assert code == 0, text
    assert quiet_daemon.call("alerts.get", {"id": alert["id"]})["alert"]["state"] == "resolved"

    # Without a name or a usable title, the alertname is the source.
    raised = quiet_daemon.call("alerts.raise", {"title": "!!!", "source": "cron"})["alert"]
    assert raised["name"] == "cron"


def test_send_help_documents_the_identity_rule_with_an_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cortexctl(["alerts", "send", "--help"]) == 0
    text = capsys.readouterr().out
    assert "with --key:" in text and "without --key:" in text
    assert text.count("--key backup-nightly") >= 3


def test_flapping_shows_in_the_list_and_the_metric() -> None:
    flap = {"flap_window_seconds": 60, "flap_high_changes": 4, "flap_low_changes": 2}
    with running_daemon({**QUIET, "alerts": flap}) as d:
        for _ in range(3):
            d.call("alerts.raise", {"key": "fan", "title": "fan speed low"})
            d.call("alerts.resolve", {"key": "fan"})
        alert = d.call("alerts.raise", {"key": "fan", "title": "fan speed low"})["alert"]
        assert alert["flapping"] is True
        code, text = cli(d, "alerts", "list")
        assert code == 0 and "fan speed low (flapping)" in text, text
        metrics = d.call("metrics")["text"]
        assert "cortex_alerts_flapping 1.0" in metrics
