"""A generic JSON-RPC client library (jsonrpcclient, which knows nothing of `stream`)
against the real daemon, the way docs/protocol.md tells such a client to read.

`updates.apply` always streams its progress; apt is the stand-in of the
update tests, so nothing on this machine changes.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonrpcclient import Error, Ok, parse, request

from tests.daemon import DaemonProcess, running_daemon
from tests.updates.test_updates_daemon import FakeApt

WAIT = 60.0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(FakeApt(tmp_path).config()) as d:
        yield d


def lines(d: DaemonProcess, payload: dict[str, Any] | list[dict[str, Any]]) -> Iterator[Any]:
    """Send one request (or batch) and yield each line the daemon answers, decoded."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(WAIT)
        sock.connect(d.socket_path)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as stream:
            for line in stream:
                yield json.loads(line)


def answers(d: DaemonProcess, payload: dict[str, Any] | list[dict[str, Any]]) -> list[Any]:
    """What docs/protocol.md tells a generic client to do: skip lines without an `id`."""
    return [m for m in lines(d, payload) if not (isinstance(m, dict) and "id" not in m)]


def test_stream_notifications_break_a_naive_reader(daemon: DaemonProcess) -> None:
    first = next(lines(daemon, request("updates.apply", {"security": True})))
    assert first["method"] == "stream" and "id" not in first
    with pytest.raises(KeyError):
        parse(first)


def test_skipping_lines_without_an_id_leaves_the_answer(daemon: DaemonProcess) -> None:
    sent = request("updates.apply", {"security": True})
    (answer,) = answers(daemon, sent)
    parsed = parse(answer)
    assert isinstance(parsed, Ok)
    assert parsed.id == sent["id"]
    assert parsed.result["simulated"] is True
    assert [p["package"] for p in parsed.result["packages"]] == ["openssl"]


def test_a_method_that_does_not_stream_sends_the_answer_alone(daemon: DaemonProcess) -> None:
    sent = request("updates.check")
    (only,) = list(lines(daemon, sent))
    parsed = parse(only)
    assert isinstance(parsed, Ok)
    assert parsed.result["counts"] == {"total": 3, "security": 1}


def test_a_batch_parses_into_one_response_per_request(daemon: DaemonProcess) -> None:
    batch = [
        request("version"),
        request("no.such.method"),
        request("updates.apply", {"security": True}),
    ]
    (array,) = answers(daemon, batch)
    by_id = {r.id: r for r in parse(array)}
    assert set(by_id) == {m["id"] for m in batch}
    version = by_id[batch[0]["id"]]
    assert isinstance(version, Ok) and version.result["protocol"] == "2.0"
    missing = by_id[batch[1]["id"]]
    assert isinstance(missing, Error) and missing.code == -32601
    applied = by_id[batch[2]["id"]]
    assert isinstance(applied, Ok) and applied.result["returncode"] == 0
