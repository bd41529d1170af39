"""`inference.explain` and `inference.ask` in the real daemon: bad input, alert-id prefixes,
the deterministic part without a model, and the model's part (its structure, never its
wording) with the real SmolLM2 model."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cortexd.protocol import InvalidParams, NotFound
from tests.daemon import DaemonProcess, running_daemon
from tests.explain.scenarios import SCENARIOS, world
from tests.inference.conftest import wait_state
from tests.plugins.conftest import EXAMPLE, GOOD_CHECK, copy_example, write_plugin

QUIET = {"logs": {"watch": False}}
CALL_TIMEOUT = 120.0
TWINS = ["abcdef01-1111-4111-8111-111111111111", "abcdef01-2222-4222-8222-222222222222"]


@pytest.fixture(scope="module")
def plain() -> Iterator[DaemonProcess]:
    """A daemon without a model, shared by the module's tests that only read."""
    with running_daemon(QUIET) as d:
        yield d


def _raise(d: DaemonProcess, title: str, **extra: Any) -> dict[str, Any]:
    params = {"title": title, "severity": "ERROR", "description": "it broke", **extra}
    alert: dict[str, Any] = d.call("alerts.raise", params)["alert"]
    return alert


def _cortexctl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CORTEX_SOCKET"}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", d.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        env=env,
        check=False,
    )


def _streamed(d: DaemonProcess, method: str, params: dict[str, Any]) -> tuple[list[Any], Any]:
    seen: list[Any] = []
    with d.client(CALL_TIMEOUT) as client:
        result = client.call(
            method, {**params, "stream": True}, on_stream=seen.append, timeout=CALL_TIMEOUT
        )
    return seen, result


def test_bad_params_are_named_and_the_daemon_keeps_serving(plain: DaemonProcess) -> None:
    alert_id = _raise(plain, "for bad params")["id"]
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("inference.explain", {}, "alert_id"),
        ("inference.explain", {"alert_id": "  "}, "alert_id"),
        ("inference.explain", {"alert_id": "x" * 200}, "alert_id"),
        ("inference.explain", {"alert_id": alert_id, "max_tokens": 0}, "max_tokens"),
        ("inference.explain", {"alert_id": alert_id, "temperature": 5}, "temperature"),
        ("inference.explain", {"alert_id": alert_id, "priority": "now"}, "priority"),
        ("inference.explain", {"alert_id": alert_id, "model": "no"}, "model"),
        ("inference.explain", {"alert_id": alert_id, "colour": 1}, "colour"),
        ("inference.ask", {"question": ""}, "question"),
        ("inference.ask", {"question": "why? " * 500}, "question"),
    ]
    for method, params, name in cases:
        with pytest.raises(InvalidParams) as caught:
            plain.call(method, params)
        assert caught.value.data["param"] == name, (params, caught.value.message)
    for unknown in ("no-such-alert", "deadbeef-0000", "0123abcd"):
        with pytest.raises(NotFound):
            plain.call("inference.explain", {"alert_id": unknown})
    assert plain.call("ping")["pong"] is True


def test_without_a_model_the_deterministic_part_is_the_whole_answer(plain: DaemonProcess) -> None:
    alert = _raise(plain, "Nightly backup failed", source="backup-script")
    stream, result = _streamed(plain, "inference.explain", {"id": alert["id"][:8]})
    # One stream message, the explanation, and no error: nothing to summarise without a model.
    assert [list(m) for m in stream] == [["explanation"]]
    assert result["summary"] is None
    assert result["summary_skipped"].startswith("MODEL_NOT_LOADED: ")
    deterministic = {k: v for k, v in result.items() if not k.startswith("summary")}
    assert deterministic == stream[0]["explanation"]
    assert result["entry"] == "external"
    assert result["alert"]["id"] == alert["id"]
    assert result["text"].splitlines()[0] == (
        f"An alert raised by another program: Nightly backup failed (ERROR, firing, "
        f"alert {alert['id'][:8]})"
    )
    assert f"  $ cortexctl alerts show {alert['id']}" in result["text"].splitlines()


def test_ask_about_the_host_finds_the_topic_and_the_failing_checks(plain: DaemonProcess) -> None:
    result = plain.call(
        "inference.ask", {"question": "Is the clock synchronised?"}, timeout=CALL_TIMEOUT
    )
    assert [t["entry"] for t in result["topics"]] == ["time_sync"]
    assert result["text"].startswith("Question: Is the clock synchronised?\n\nThe host now: ")
    assert result["summary"] is None
    status = {c["check_id"]: c["status"] for c in result["not_passing"]}
    assert all(s in ("WARN", "FAIL", "ERROR") for s in status.values())
    off_topic = plain.call("inference.ask", {"question": "qwerty zxcvb", "model": False})
    assert all(t["entry"] != "external" for t in off_topic["topics"])


def test_the_cli_prints_the_deterministic_part_and_says_why_there_is_no_summary(
    plain: DaemonProcess,
) -> None:
    alert = _raise(plain, "Replication lag", source="db-watch")
    result = plain.call("inference.explain", {"alert_id": alert["id"], "model": False})
    done = _cortexctl(plain, "explain", alert["id"][:8])
    assert done.returncode == 0, done.stderr
    # The same deterministic part (timings aside) whether asked over the socket or printed.
    assert re.sub(r"\d+", "N", done.stdout) == re.sub(r"\d+", "N", result["text"])
    assert "cortexctl: no model summary: MODEL_NOT_LOADED" in done.stderr
    quiet = _cortexctl(plain, "explain", "--no-model", alert["id"][:8])
    assert quiet.returncode == 0 and quiet.stderr == ""
    as_json = _cortexctl(plain, "--json", "explain", "--no-model", alert["id"])
    assert as_json.returncode == 0
    # JSON lines: the deterministic part as it streams, then the whole answer.
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    streamed = lines[0]["stream"]["explanation"]["text"]
    assert re.sub(r"\d+", "N", streamed) == re.sub(r"\d+", "N", result["text"])
    assert lines[-1]["result"]["summary"] is None
    assert lines[-1]["result"]["summary_skipped"] == "not asked for (model: false)"
    host = _cortexctl(plain, "ask", "--host", "--no-model", "why", "is", "my", "disk", "full")
    assert host.returncode == 0, host.stderr
    assert host.stdout.startswith("Question: why is my disk full\n")
    assert "== A filesystem is running out of space or inodes" in host.stdout
    usage = _cortexctl(plain, "ask", "--no-model", "what is swap")
    assert usage.returncode == 2 and "--no-model needs --host" in usage.stderr


def test_every_alert_id_param_takes_a_unique_prefix(tmp_path: Path) -> None:
    config = {**QUIET, "state_dir": str(tmp_path / "state")}
    with running_daemon(config) as d:
        made = [_raise(d, f"alert {n}", labels={"n": str(n)})["id"] for n in range(3)]
    # Ids that share their first 8 characters, as uuid4 ids now and then do.
    with sqlite3.connect(tmp_path / "state" / "alerts.db") as db:
        for old, new in zip(made, TWINS, strict=False):
            db.execute("UPDATE alerts SET id = ? WHERE id = ?", (new, old))
    db.close()
    third = made[2]
    with running_daemon(config) as d:
        assert d.call("alerts.get", {"id": third[:8]})["alert"]["id"] == third
        assert d.call("alerts.ack", {"id": third[:8]}) == {"acknowledged": [third]}
        assert d.call("acknowledge_alert", {"alert_id": TWINS[0][:10]}) == {
            "acknowledged": [TWINS[0]]
        }
        assert d.call("alerts.resolve", {"id": TWINS[1][:10]})["alert"]["state"] == "resolved"
        for method, param in (
            ("alerts.get", "id"),
            ("alerts.ack", "id"),
            ("alerts.resolve", "id"),
            ("inference.explain", "alert_id"),
        ):
            with pytest.raises(InvalidParams) as caught:
                d.call(method, {param: "abcdef01"})
            assert caught.value.data["candidates"] == TWINS, method
            assert caught.value.data["param"] == param
        assert d.call("inference.explain", {"alert_id": third[:8]})["alert"]["id"] == third
        shown = _cortexctl(d, "alerts", "show", third[:8])
        assert shown.returncode == 0 and third in shown.stdout
        ambiguous = _cortexctl(d, "explain", "abcdef01")
        assert ambiguous.returncode == 1
        assert "INVALID_PARAMS" in ambiguous.stderr
        assert TWINS[0] in ambiguous.stderr and TWINS[1] in ambiguous.stderr


# -- the model's part ---------------------------------------------------------------------


def _check_summary(summary: dict[str, Any], max_tokens: int) -> None:
    """The summary's structure: a finished generation within the length asked, from a
    compact prompt. Its wording is the model's and is not tested."""
    assert summary["stop_reason"] in ("stop", "length")
    assert isinstance(summary["text"], str) and summary["text"].strip()
    assert 0 < summary["eval_count"] <= max_tokens
    # The facts, not a health dump: a prompt the small model reads in about a second.
    assert summary["prompt_eval_count"] <= 320
    assert summary["ttft_ms"] is not None


@pytest.mark.root
@pytest.mark.slow
def test_the_summary_streams_after_the_deterministic_part(model_path: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("root-only: the scenario mounts a tmpfs inside private namespaces")
    scenario = SCENARIOS[0]
    extra = {"inference": {"model_path": model_path, "n_threads": 1}}
    with world(scenario, extra) as w:
        wait_state(w.daemon, {"ready"})
        values = scenario.setup(w)
        deterministic = w.explain(scenario.check, {"mountpoint": values["mountpoint"]}, model=False)
        stream, result = _streamed(
            w.daemon, "inference.explain", {"alert_id": deterministic["alert"]["id"][:8]}
        )
        cli = _cortexctl(w.daemon, "explain", "--max-tokens", "24", deterministic["alert"]["id"])
    # First the whole deterministic part, then the queue position, then the model's text.
    assert list(stream[0]) == ["explanation"]
    assert stream[0]["explanation"]["causes"] == deterministic["causes"]
    assert set(stream[1]) == {"request_id", "position", "queued"}
    assert all(list(m) == ["text"] for m in stream[2:]) and len(stream) > 2
    summary = result["summary"]
    assert result["summary_skipped"] is None
    assert "".join(m["text"] for m in stream[2:]) == summary["text"]
    _check_summary(summary, max_tokens=160)
    assert cli.returncode == 0, cli.stderr
    head, heading, tail = cli.stdout.partition(
        "\nSummary (local model; the facts above are what counts):\n"
    )
    assert heading and tail.strip()
    assert re.sub(r"\d+", "N", head.rstrip("\n")) == re.sub(r"\d+", "N", result["text"].rstrip())


@pytest.mark.slow
def test_ask_about_the_host_with_the_model(model_path: str) -> None:
    config = {**QUIET, "inference": {"model_path": model_path, "n_threads": 1}}
    with running_daemon(config) as d:
        wait_state(d, {"ready"})
        stream, result = _streamed(
            d, "inference.ask", {"question": "Why would a Linux disk fill up?", "max_tokens": 48}
        )
    assert list(stream[0]) == ["explanation"]
    assert [t["entry"] for t in result["topics"]] == ["disk_space"]
    _check_summary(result["summary"], max_tokens=48)


def test_a_check_plugin_explains_its_alerts_with_its_own_runbook(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        copy_example(plugins, closed_port)
        bad = write_plugin(plugins, "greedy", GOOD_CHECK)
        (bad / "runbook.yaml").write_text(
            (EXAMPLE / "runbook.yaml").read_text().replace("plugin_port_check", "disk_space")
        )
        os.chmod(bad / "runbook.yaml", 0o644)
        config = {**QUIET, "plugins": {"directory": str(plugins)}}
        with running_daemon(config) as d:
            d.call("checks.run", {"ids": ["plugin_port_check", "plugin_greedy"]}, timeout=60)
            alerts = {a["source"]: a for a in d.call("alerts.list")["alerts"]}
            own = d.call("inference.explain", {"alert_id": alerts["plugin_port_check"]["id"]})
            other = d.call("inference.explain", {"alert_id": alerts["plugin_greedy"]["id"]})
    assert own["entry"] == "port_check"
    assert [c["id"] for c in own["causes"] if c["pointed_to"]] == ["not_listening"]
    assert own["commands"][1] == "cortexctl doctor --check plugin_port_check -v"
    # A runbook that reaches beyond its own check is not used: the generic entry answers.
    assert other["entry"] == "plugin_check"
    assert any("greedy's runbook.yaml is not used" in n for n in other["notes"])
