"""Every kind of bad input gets its JSON-RPC error from the real daemon, and the
daemon keeps answering `ping` on a new connection afterwards.

Codes and `data.name` follow the table in docs/protocol.md.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.daemon import DaemonProcess, running_daemon

DEFAULT_LIMIT = 64 * 1024
READ_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def shared_daemon() -> Iterator[DaemonProcess]:
    """One daemon for the whole module: each case also proves it survived the last."""
    with running_daemon() as d:
        yield d


def exchange(
    path: str, payload: bytes, *, count: int = 1, until_closed: bool = False
) -> tuple[list[dict[str, Any]], bool]:
    """Send `payload` on a new connection and read `count` answer frames.

    With `until_closed`, keep reading until the daemon closes the connection.
    Returns the frames and whether the daemon closed it (EOF or reset).
    """
    closed = False
    buf = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_TIMEOUT)
        sock.connect(path)
        sock.sendall(payload)
        while until_closed or buf.count(b"\n") < count:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf += chunk
    return [orjson.loads(line) for line in buf.splitlines() if line.strip()], closed


def ping_on_new_connection(d: DaemonProcess) -> None:
    assert d.call("ping")["pong"] is True


def _req(**fields: Any) -> bytes:
    return orjson.dumps(fields) + b"\n"


PARSE_CASES = {
    "not utf-8": b'{"jsonrpc":"2.0","id":1,"method":"p\xffing"}\n',
    "lone continuation byte": b"\x80\n",
    "truncated json": b'{"jsonrpc":"2.0","id":1,"method":"ping"\n',
    "garbage": b"hello daemon\n",
    "trailing comma": b'{"jsonrpc":"2.0","id":1,"method":"ping",}\n',
    "nested too deep": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":'
    + b"[" * 5000
    + b"]" * 5000
    + b"}}\n",
}


@pytest.mark.parametrize("payload", PARSE_CASES.values(), ids=PARSE_CASES.keys())
def test_parse_errors(shared_daemon: DaemonProcess, payload: bytes) -> None:
    frames, _ = exchange(shared_daemon.socket_path, payload)
    assert len(frames) == 1
    assert frames[0]["jsonrpc"] == "2.0"
    assert frames[0]["id"] is None
    assert frames[0]["error"]["code"] == -32700
    assert frames[0]["error"]["data"]["name"] == "PARSE_ERROR"
    ping_on_new_connection(shared_daemon)


# (payload, id the answer must carry)
INVALID_CASES: dict[str, tuple[bytes, Any]] = {
    "empty array": (b"[]\n", None),
    "number": (b"42\n", None),
    "string": (b'"ping"\n', None),
    "null": (b"null\n", None),
    "missing method": (_req(jsonrpc="2.0", id=7), 7),
    "empty method": (_req(jsonrpc="2.0", id=7, method=""), 7),
    "method not a string": (_req(jsonrpc="2.0", id="m", method=5), "m"),
    "jsonrpc 1.0": (_req(jsonrpc="1.0", id=8, method="ping"), 8),
    "jsonrpc missing": (_req(id=9, method="ping"), 9),
    "jsonrpc number": (_req(jsonrpc=2.0, id=9, method="ping"), 9),
    "params string": (_req(jsonrpc="2.0", id=10, method="ping", params="x"), 10),
    "params number": (_req(jsonrpc="2.0", id=11, method="ping", params=5), 11),
    "params true": (_req(jsonrpc="2.0", id=12, method="ping", params=True), 12),
    "id boolean": (_req(jsonrpc="2.0", id=True, method="ping"), None),
    "id object": (_req(jsonrpc="2.0", id={"a": 1}, method="ping"), None),
    "id array": (_req(jsonrpc="2.0", id=[1], method="ping"), None),
}


@pytest.mark.parametrize(("payload", "echo_id"), INVALID_CASES.values(), ids=INVALID_CASES.keys())
def test_invalid_requests(shared_daemon: DaemonProcess, payload: bytes, echo_id: Any) -> None:
    frames, _ = exchange(shared_daemon.socket_path, payload)
    assert len(frames) == 1
    assert frames[0]["id"] == echo_id
    assert frames[0]["error"]["code"] == -32600
    assert frames[0]["error"]["data"]["name"] == "INVALID_REQUEST"
    ping_on_new_connection(shared_daemon)


def test_unknown_method_names_it(shared_daemon: DaemonProcess) -> None:
    frames, _ = exchange(
        shared_daemon.socket_path, _req(jsonrpc="2.0", id="x", method="no.such.method")
    )
    assert frames == [
        {
            "jsonrpc": "2.0",
            "id": "x",
            "error": {
                "code": -32601,
                "message": "unknown method 'no.such.method'",
                "data": {"name": "METHOD_NOT_FOUND", "method": "no.such.method"},
            },
        }
    ]
    ping_on_new_connection(shared_daemon)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"section": 5}, "section"),
        ({"sektion": "server"}, "sektion"),
        (["server", "extra"], "[1]"),
    ],
)
def test_invalid_params_name_the_param(
    shared_daemon: DaemonProcess, params: Any, param: str
) -> None:
    frames, _ = exchange(
        shared_daemon.socket_path, _req(jsonrpc="2.0", id=3, method="config.get", params=params)
    )
    assert len(frames) == 1
    error = frames[0]["error"]
    assert frames[0]["id"] == 3
    assert error["code"] == -32602
    assert error["data"]["name"] == "INVALID_PARAMS"
    assert error["data"]["param"] == param
    assert repr(param) in error["message"]
    ping_on_new_connection(shared_daemon)


def test_oversized_line_is_too_large_and_closes(shared_daemon: DaemonProcess) -> None:
    payload = (
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":["' + b"a" * DEFAULT_LIMIT + b'"]}\n'
    )
    frames, closed = exchange(shared_daemon.socket_path, payload, until_closed=True)
    assert closed, "the daemon must close the connection after TOO_LARGE"
    assert len(frames) == 1
    assert frames[0]["error"]["code"] == -32006
    assert frames[0]["error"]["data"] == {"name": "TOO_LARGE", "limit": DEFAULT_LIMIT}
    ping_on_new_connection(shared_daemon)


def test_good_requests_around_a_bad_one_on_one_connection(shared_daemon: DaemonProcess) -> None:
    payload = (
        _req(jsonrpc="2.0", id=1, method="ping")
        + b"{oops\n"
        + b"\n"  # empty lines are ignored
        + _req(jsonrpc="2.0", id=2, method="version")
    )
    frames, _ = exchange(shared_daemon.socket_path, payload, count=3)
    assert [f["id"] for f in frames] == [1, None, 2]
    assert frames[0]["result"]["pong"] is True
    assert frames[1]["error"]["code"] == -32700
    assert "version" in frames[2]["result"]


def test_errors_show_in_status(shared_daemon: DaemonProcess) -> None:
    exchange(shared_daemon.socket_path, b"not json\n")
    status = shared_daemon.call("status")
    server = status["server"]
    assert server["errors_total"] >= 1
    assert server["methods"]["unknown"]["errors"]["PARSE_ERROR"] >= 1


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
@pytest.mark.parametrize("newline", [True, False], ids=["newline", "no-newline"])
def test_socat_ping(shared_daemon: DaemonProcess, newline: bool) -> None:
    request = b'{"jsonrpc":"2.0","id":1,"method":"ping"}' + (b"\n" if newline else b"")
    result = subprocess.run(
        ["socat", "-", f"UNIX-CONNECT:{shared_daemon.socket_path}"],
        input=request,
        capture_output=True,
        timeout=30,
        check=True,
    )
    answer = orjson.loads(result.stdout)
    assert answer["id"] == 1
    assert answer["result"]["pong"] is True


def test_socket_mode_and_configured_group() -> None:
    group = grp.getgrnam("adm") if _group_exists("adm") else grp.getgrgid(os.getgid())
    with running_daemon({"server": {"socket_group": group.gr_name}}) as d:
        st = os.stat(d.socket_path)
        assert st.st_mode & 0o777 == 0o660
        if os.getuid() == 0:
            assert st.st_gid == group.gr_gid


def test_missing_socket_group_falls_back_with_a_warning() -> None:
    with running_daemon({"server": {"socket_group": "no-such-group-cx"}}) as d:
        st = os.stat(d.socket_path)
        assert st.st_mode & 0o777 == 0o660
        assert st.st_gid == os.getgid()
        log = d.log()
        assert "no-such-group-cx" in log
        assert "WARN" in log
        ping_on_new_connection(d)


def _group_exists(name: str) -> bool:
    with contextlib.suppress(KeyError):
        grp.getgrnam(name)
        return True
    return False
