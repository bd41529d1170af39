"""`--json` is valid JSON for every command and every outcome: each command of the
parser tree runs against a real daemon and against none, and what it prints
parses (one document, or JSON lines for streamed answers)."""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cortexctl import cli
from tests.daemon import DaemonProcess, running_daemon
from tests.updates.test_updates_daemon import FakeApt

ALERT = "{alert}"
TMP = "{tmp}"
# Arguments that make each runnable command do something real. A command
# added without an entry here fails test_every_command_has_a_sample.
SAMPLES: dict[tuple[str, ...], list[str]] = {
    ("ping",): [],
    ("version",): [],
    ("status",): [],
    ("config", "show"): ["server"],
    ("config", "reload"): [],
    ("health",): [],
    ("doctor",): ["--check", "memory", "--check", "time_sync"],
    ("alerts",): [],
    ("alerts", "list"): ["--state", "all"],
    ("alerts", "send"): ["-m", "walked by the JSON test", "--label", "n=1"],
    ("alerts", "show"): [ALERT],
    ("alerts", "ack"): [ALERT],
    ("alerts", "resolve"): [ALERT],
    ("alerts", "clear"): [],
    ("alerts", "silence", "add"): ['unit="walk.service"', "--for", "1h"],
    ("alerts", "silence", "list"): ["--all"],
    ("alerts", "silence", "rm"): ["nosuch"],
    ("ask",): ["--max-tokens", "4", "hello"],
    ("explain",): [ALERT],
    ("model", "status"): [],
    ("model", "load"): [f"{TMP}/missing.gguf"],
    ("model", "unload"): [],
    ("inference", "cancel"): ["nosuchrequest"],
    ("logs", "tail"): ["-n", "3"],
    ("logs", "errors"): ["--since", "10m"],
    ("logs", "search"): ["cortexd", "--since", "10m", "--limit", "2"],
    ("logs", "export"): ["--since", "10m", "--limit", "2"],
    ("repair", "apt"): ["--locks"],
    ("repair", "permissions"): ["--cortex"],
    ("repair", "services"): [],
    ("repair", "fix"): ["clear_apt_locks"],
    ("repair", "list"): [],
    ("healing", "log"): [],
    ("plugins", "list"): ["--available"],
    ("plugins", "enable"): ["nosuch"],
    ("plugins", "disable"): ["nosuch"],
    ("plugins", "reload"): [],
    ("plugins", "call"): ["nosuch", "hello", "name=ops"],
    ("plugins", "create"): ["walked", "-d", TMP],
    ("notify", "test"): ["nosuch"],
    ("notify", "history"): [],
    ("dead-letter", "list"): [],
    ("dead-letter", "show"): ["1"],
    ("dead-letter", "retry"): ["1"],
    ("dead-letter", "purge"): [],
    ("backup",): [f"{TMP}/state.tar.gz"],
    ("restore",): [f"{TMP}/state.tar.gz", "-y"],
    ("update", "check"): [],
    ("update", "snapshot"): [],
    ("update", "rollback"): ["-y"],
    ("update", "apply"): ["--packages"],
    ("completion",): ["fish"],
    ("shutdown",): [],
}
# Other outcomes worth walking: refusals, simulated runs, failures found locally.
VARIANTS: list[list[str]] = [
    ["doctor", "--fix", "--check", "apt_locks"],
    ["update", "rollback", "--list"],
    ["update", "rollback"],  # no -y and no terminal: NOT_CONFIRMED
    ["update", "apply", "--packages", "--security"],
    ["update", "apply"],  # nothing named: USAGE
    ["restore", f"{TMP}/missing.tar.gz", "-y"],
    ["backup", f"{TMP}/state.tar.gz"],  # exists: FILE_ERROR
    ["plugins", "create", "walked", "-d", TMP],  # exists: FILE_ERROR
    ["plugins", "create", "Bad Name"],
    ["alerts", "ack", "--all"],
    ["config", "show", "nosuch"],
]
# Commands that judge something and say so in their result, not in an error
# (the repair commands list each fix that could not be planned or applied).
JUDGES = {
    ("doctor",),
    ("notify", "test"),
    ("update", "check"),
    ("update", "apply"),
    ("repair", "apt"),
    ("repair", "permissions"),
    ("repair", "services"),
    ("repair", "fix"),
}
# Commands that need no daemon.
OFFLINE = {("plugins", "create"), ("completion",)}


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """The commands that run: parsers whose subcommand is optional or absent."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if (sub is None or not sub.required) and path:
        yield path
    if sub is not None:
        for name, child in sub.choices.items():
            yield from leaves(child, (*path, name))


def documents(text: str) -> list[Any]:
    """What `text` holds: one JSON document, or one per line (JSON lines)."""
    assert text.strip(), "no output"
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_json(words: list[str]) -> tuple[int, list[Any]]:
    out = io.StringIO()
    code = cli.main(words, stdout=out)
    try:
        return code, documents(out.getvalue())
    except (json.JSONDecodeError, AssertionError) as exc:
        raise AssertionError(f"{words}: not JSON ({exc}):\n{out.getvalue()}") from None


def expand(words: list[str], tmp: Path, alert: str) -> list[str]:
    return [w.replace(TMP, str(tmp)).replace(ALERT, alert) for w in words]


def check_error(words: list[str], doc: Any) -> None:
    error = doc["error"]
    assert error["message"], words
    assert error["data"]["name"].isupper(), words


def test_every_command_has_a_sample() -> None:
    assert set(leaves(cli.build_parser())) == set(SAMPLES)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    apt = FakeApt(tmp_path)
    with running_daemon(apt.config()) as d:
        yield d


def command_of(words: list[str]) -> tuple[str, ...]:
    """The longest command path of SAMPLES that `words` start with."""
    return max((p for p in SAMPLES if tuple(words[: len(p)]) == p), key=len)


def test_every_command_prints_json_against_a_daemon(daemon: DaemonProcess, tmp_path: Path) -> None:
    alert = daemon.call("alerts.raise", {"title": "for the JSON walk"})["alert"]["id"]
    lines = [[*path, *sample] for path, sample in SAMPLES.items() if path != ("shutdown",)]
    outcomes: dict[str, int] = {}
    for template in [*lines, *VARIANTS]:
        words = expand(template, tmp_path, alert)
        code, docs = run_json(["--socket", daemon.socket_path, "--json", *words])
        outcomes[" ".join(template)] = code
        last = docs[-1]
        if code != 0 and command_of(words) not in JUDGES:
            check_error(words, last)
        if len(docs) > 1:
            # JSON lines: streamed messages, then the result (or an error).
            assert all(set(d) == {"stream"} for d in docs[:-1]), words
            assert set(last) in ({"result"}, {"error"}), words
    assert outcomes["status"] == 0
    assert outcomes["alerts show {alert}"] == 0
    assert outcomes["backup {tmp}/state.tar.gz"] == 1  # the second time: it exists
    assert outcomes["restore {tmp}/state.tar.gz -y"] == 0
    assert outcomes["update apply --packages"] == 0
    assert outcomes["update rollback"] == 1
    assert outcomes["update apply"] == 2
    assert outcomes["plugins create walked -d {tmp}"] == 1  # the second time: it exists
    assert outcomes["ask --max-tokens 4 hello"] == 1  # no model: MODEL_NOT_LOADED
    code, docs = run_json(["--socket", daemon.socket_path, "--json", "shutdown"])
    assert code == 0 and "error" not in docs[-1]


def test_streamed_answers_are_json_lines(daemon: DaemonProcess) -> None:
    code, docs = run_json(
        ["--socket", daemon.socket_path, "update", "apply", "--packages", "--json"]
    )
    assert code == 0
    *streamed, last = docs
    assert streamed and all(set(d) == {"stream"} for d in streamed)
    phases = [d["stream"].get("phase") for d in streamed]
    assert "planned" in phases
    assert last["result"]["simulated"] is True


def test_every_command_prints_json_without_a_daemon(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    for path, sample in SAMPLES.items():
        words = [*path, *expand(sample, tmp_path, "0123abcd")]
        code, docs = run_json(["--socket", missing, "--json", *words])
        if path in OFFLINE:
            assert code == 0, words
            assert "error" not in docs[-1], words
            continue
        assert code == 3, (words, docs)
        check_error(words, docs[-1])
        assert docs[-1]["error"]["data"]["name"] == "UNREACHABLE"
        assert docs[-1]["error"]["data"]["hint"]


def test_an_untrusted_socket_is_reported_as_such(tmp_path: Path) -> None:
    # A directory anyone may write to (and not sticky): someone else could
    # have put the socket there, so nothing is sent.
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    path = str(loose / "c.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        code, docs = run_json(["--socket", path, "--json", "status"])
    finally:
        listener.close()
    assert code == 3
    error = docs[-1]["error"]
    assert error["data"]["name"] == "UNTRUSTED_SOCKET"
    assert "writable by others" in error["message"]
