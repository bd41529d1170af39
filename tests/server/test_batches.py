"""JSON-RPC 2.0 batches (specification §6), and the specification's §7 examples.

The §7 exchanges run against the real daemon, with the specification's
`subtract`, `sum` and `get_data` mapped to methods that exist here; requests
naming methods that exist nowhere (`foobar`, `foo.get`, `notify_hello`) and the
malformed ones are sent exactly as the specification prints them. Limits and
concurrency inside a batch use the in-process server with test methods
(`harness.py`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import anyio
import orjson
import pytest

from cortexd.server import Call, Method
from tests.daemon import DaemonProcess, running_daemon
from tests.server.harness import MAX_FRAME, Conn, sample_methods, serving

READ_TIMEOUT = 10.0
# Every exchange ends with this request, so "nothing is returned" is seen as
# "only the answer to this comes back" instead of as a timeout.
TRAILER = b'{"jsonrpc":"2.0","id":"trailer","method":"ping"}\n'


class Any_:
    """Equal to anything: for members whose value depends on the moment (`time`)."""

    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY = Any_()
LOGGING = {"level": "DEBUG", "target": "stderr"}  # what tests/daemon.py configures


def config_result(section: str, value: Any) -> dict[str, Any]:
    return {"config": {section: value}, "sources": ANY, "warnings": [], "restart_required": []}


def error(code: int, name: str, req_id: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": req_id,
        "error": {"code": code, "message": ANY, "data": ErrorData(name)},
    }


class ErrorData:
    """`data` of an error: carries `name`; other members vary with the error."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and other.get("name") == self.name

    def __repr__(self) -> str:
        return f"data(name={self.name})"


def result(req_id: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "result": value}


PONG = {"pong": True, "time": ANY}
TRAILER_ANSWER = result("trailer", PONG)
VERSION = {"version": ANY, "protocol": "2.0", "python": ANY}

# (request line as sent, the answers expected before the trailer's); a batch's
# answer is a list, whose members may come in any order.
SPEC_EXAMPLES: dict[str, tuple[bytes, list[Any]]] = {
    "positional params": (
        b'{"jsonrpc": "2.0", "method": "config.get", "params": ["logging"], "id": 1}\n'
        b'{"jsonrpc": "2.0", "method": "config.get", "params": ["server"], "id": 2}\n',
        [result(1, config_result("logging", LOGGING)), result(2, config_result("server", ANY))],
    ),
    "named params": (
        b'{"jsonrpc": "2.0", "method": "alerts.list",'
        b' "params": {"state": "resolved", "category": "llm_error"}, "id": 3}\n'
        b'{"jsonrpc": "2.0", "method": "alerts.list",'
        b' "params": {"category": "llm_error", "state": "resolved"}, "id": 4}\n',
        [result(3, {"alerts": [], "count": 0}), result(4, {"alerts": [], "count": 0})],
    ),
    "notification": (
        b'{"jsonrpc": "2.0", "method": "ping", "params": []}\n'
        b'{"jsonrpc": "2.0", "method": "foobar"}\n',
        [],
    ),
    "non-existent method": (
        b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}\n',
        [error(-32601, "METHOD_NOT_FOUND", "1")],
    ),
    "invalid JSON": (
        b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]\n',
        [error(-32700, "PARSE_ERROR", None)],
    ),
    "invalid Request object": (
        b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}\n',
        [error(-32600, "INVALID_REQUEST", None)],
    ),
    "batch, invalid JSON": (
        b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        b'{"jsonrpc": "2.0", "method"]\n',
        [error(-32700, "PARSE_ERROR", None)],
    ),
    "empty array": (b"[]\n", [error(-32600, "INVALID_REQUEST", None)]),
    "invalid batch, not empty": (b"[1]\n", [[error(-32600, "INVALID_REQUEST", None)]]),
    "invalid batch": (b"[1,2,3]\n", [[error(-32600, "INVALID_REQUEST", None)] * 3]),
    "batch": (
        b"["
        b'{"jsonrpc": "2.0", "method": "version", "id": "1"},'
        b'{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
        b'{"jsonrpc": "2.0", "method": "config.get", "params": ["logging"], "id": "2"},'
        b'{"foo": "boo"},'
        b'{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
        b'{"jsonrpc": "2.0", "method": "ping", "id": "9"}'
        b"]\n",
        [
            [
                result("1", VERSION),
                result("2", config_result("logging", LOGGING)),
                error(-32600, "INVALID_REQUEST", None),
                error(-32601, "METHOD_NOT_FOUND", "5"),
                result("9", PONG),
            ]
        ],
    ),
    "batch of notifications only": (
        b'[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
        b'{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
        b'{"jsonrpc": "2.0", "method": "ping"}]\n',
        [],
    ),
}


@pytest.fixture(scope="module")
def shared_daemon() -> Iterator[DaemonProcess]:
    with running_daemon() as d:
        yield d


def exchange(path: str, payload: bytes) -> list[Any]:
    """Send `payload` and then the trailer; every frame until the daemon closes."""
    buf = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_TIMEOUT)
        sock.connect(path)
        sock.sendall(payload + TRAILER)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            buf += chunk
    return [orjson.loads(line) for line in buf.splitlines()]


def unordered(actual: list[Any], expected: list[Any]) -> bool:
    """Whether `actual` holds the `expected` items in any order (lists nested likewise)."""
    if len(actual) != len(expected):
        return False
    left = list(actual)
    for want in expected:
        for i, got in enumerate(left):
            if matches(got, want):
                del left[i]
                break
        else:
            return False
    return True


def matches(got: Any, want: Any) -> bool:
    if isinstance(want, list) and isinstance(got, list):
        return unordered(got, want)
    return bool(want == got)


@pytest.mark.parametrize(("payload", "answers"), SPEC_EXAMPLES.values(), ids=SPEC_EXAMPLES.keys())
def test_the_specification_examples(
    shared_daemon: DaemonProcess, payload: bytes, answers: list[Any]
) -> None:
    frames = exchange(shared_daemon.socket_path, payload)
    assert unordered(frames, [*answers, TRAILER_ANSWER]), frames


def test_the_answer_to_a_batch_is_one_line(shared_daemon: DaemonProcess) -> None:
    batch = b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"status"}]'
    frames = exchange(shared_daemon.socket_path, batch + b"\n")
    assert len(frames) == 2
    assert isinstance(frames[0], list)
    assert sorted(a["id"] for a in frames[0]) == [1, 2]


def test_a_bad_member_says_which_one(shared_daemon: DaemonProcess) -> None:
    batch = b'[{"jsonrpc":"2.0","id":1,"method":"ping"},"ping",{"jsonrpc":"1.0","id":7}]\n'
    frames = exchange(shared_daemon.socket_path, batch)
    by_id = {a["id"]: a for a in frames[0]}
    assert by_id[1]["result"]["pong"] is True
    assert by_id[None]["error"]["message"] == "batch member 1: a request must be a JSON object"
    assert by_id[None]["error"]["data"] == {"name": "INVALID_REQUEST", "member": 1}
    assert by_id[7]["error"]["message"] == 'batch member 2: "jsonrpc" must be "2.0"'
    assert by_id[7]["error"]["data"] == {"name": "INVALID_REQUEST", "member": 2}


def test_a_batch_over_the_default_limit_is_refused_whole(shared_daemon: DaemonProcess) -> None:
    def batch(n: int) -> bytes:
        return orjson.dumps([{"jsonrpc": "2.0", "id": i, "method": "version"} for i in range(n)])

    before = shared_daemon.call("status")["server"]["methods"]["version"]["requests"]
    frames = exchange(shared_daemon.socket_path, batch(101) + b"\n")
    assert frames[0] == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32600,
            "message": "a batch of 101 requests is over the limit of 100; "
            "split it into smaller batches",
            "data": {"name": "INVALID_REQUEST", "limit": 100, "members": 101},
        },
    }
    after = shared_daemon.call("status")["server"]["methods"]["version"]["requests"]
    assert after == before, "no member of a refused batch may run"
    frames = exchange(shared_daemon.socket_path, batch(100) + b"\n")
    assert sorted(a["id"] for a in frames[0]) == list(range(100))
    assert all(a["result"]["protocol"] == "2.0" for a in frames[0])


def test_status_counts_each_member_under_its_method(shared_daemon: DaemonProcess) -> None:
    def count() -> int:
        methods = shared_daemon.call("status")["server"]["methods"]
        return int(methods.get("health", {}).get("requests", 0))

    before = count()
    exchange(
        shared_daemon.socket_path,
        b'[{"jsonrpc":"2.0","id":1,"method":"health"},{"jsonrpc":"2.0","method":"health"}]\n',
    )
    assert count() == before + 2


# -- in-process: limits and concurrency inside a batch ---------------------------------


async def recv_frame(conn: Conn, within: float = 10.0) -> Any:
    """One frame, which for a batch's answer is a list."""
    with anyio.fail_after(within):
        line = await conn.reader.receive_until(b"\n", MAX_FRAME)
    return orjson.loads(line)


class Gate:
    """A method whose calls wait until the test opens the gate; counts who entered."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.entered = 0

    async def handler(self, call: Call) -> dict[str, int]:
        self.entered += 1
        await self.open.wait()
        return {"entered": self.entered}

    def method(self) -> Method:
        return Method("gate", self.handler)


def gate_batch(n: int, first_id: int = 0) -> bytes:
    members = [{"jsonrpc": "2.0", "id": first_id + i, "method": "gate"} for i in range(n)]
    return orjson.dumps(members) + b"\n"


async def test_each_member_counts_against_the_in_flight_limit() -> None:
    gate = Gate()
    async with serving([*sample_methods(), gate.method()], max_inflight_per_connection=2) as s:
        conn = await s.connect()
        await conn.send(gate_batch(5))
        await s.wait_until(lambda: gate.entered == 2)
        await anyio.sleep(0.3)  # room for a member the limit failed to hold back
        assert gate.entered == 2
        assert s.server.inflight == 2
        gate.open.set()
        answers = await recv_frame(conn)
        assert sorted(a["id"] for a in answers) == [0, 1, 2, 3, 4]
        assert gate.entered == 5


async def test_a_held_back_batch_holds_back_the_connection_only() -> None:
    gate = Gate()
    async with serving([*sample_methods(), gate.method()], max_inflight_per_connection=1) as s:
        busy = await s.connect()
        await busy.send(gate_batch(2))
        await s.wait_until(lambda: gate.entered == 1)
        other = await s.connect()
        assert (await other.request("fast"))["result"] == {"fast": True}
        gate.open.set()
        assert len(await recv_frame(busy)) == 2


async def test_the_batch_limit_comes_from_the_config() -> None:
    gate = Gate()
    async with serving([*sample_methods(), gate.method()], max_batch_members=3) as s:
        conn = await s.connect()
        await conn.send(gate_batch(4))
        frame = await recv_frame(conn)
        assert frame["error"]["data"] == {"name": "INVALID_REQUEST", "limit": 3, "members": 4}
        assert gate.entered == 0
        gate.open.set()
        await conn.send(gate_batch(3, first_id=10))
        assert sorted(a["id"] for a in await recv_frame(conn)) == [10, 11, 12]
        # The connection carries on with single requests too.
        assert (await conn.request("fast"))["result"] == {"fast": True}


async def test_answers_wait_for_the_slowest_member_and_singles_overtake() -> None:
    gate = Gate()
    async with serving([*sample_methods(), gate.method()]) as s:
        conn = await s.connect()
        batch = [
            {"jsonrpc": "2.0", "id": "g", "method": "gate"},
            {"jsonrpc": "2.0", "id": "f", "method": "fast"},
        ]
        await conn.send(orjson.dumps(batch) + b"\n")
        await s.wait_until(lambda: gate.entered == 1)
        assert (await conn.request("fast", req_id="single"))["id"] == "single"
        gate.open.set()
        answers = await recv_frame(conn)
        assert {a["id"] for a in answers} == {"g", "f"}


async def test_stream_messages_of_a_member_come_before_the_batch_answer() -> None:
    async with serving() as s:
        conn = await s.connect()
        batch = [
            {"jsonrpc": "2.0", "id": "c", "method": "chatty", "params": {"count": 2}},
            {"jsonrpc": "2.0", "method": "chatty", "params": {"count": 2}},
            {"jsonrpc": "2.0", "id": "f", "method": "fast"},
        ]
        await conn.send(orjson.dumps(batch) + b"\n")
        frames = [await recv_frame(conn) for _ in range(3)]
        assert frames[0] == {
            "jsonrpc": "2.0",
            "method": "stream",
            "params": {"id": "c", "seq": 0, "data": {"n": 0}},
        }
        assert frames[1]["params"] == {"id": "c", "seq": 1, "data": {"n": 1}}
        assert sorted(a["id"] for a in frames[2]) == ["c", "f"]


async def test_member_errors_timeouts_and_bugs_are_answered_in_the_array() -> None:
    async with serving() as s:
        conn = await s.connect()
        batch = [
            {"jsonrpc": "2.0", "id": 1, "method": "broken"},
            {"jsonrpc": "2.0", "id": 2, "method": "quick_timeout", "params": {"seconds": 5}},
            {"jsonrpc": "2.0", "id": 3, "method": "echo", "params": {"text": "t", "count": 2}},
            {"jsonrpc": "2.0", "id": 4, "method": "admin_only"},
            {"jsonrpc": "2.0", "id": 5, "method": "echo", "params": {"text": "ok"}},
        ]
        await conn.send(orjson.dumps(batch) + b"\n")
        by_id = {a["id"]: a for a in await recv_frame(conn)}
        assert by_id[1]["error"]["data"]["name"] == "INTERNAL_ERROR"
        assert "secret" not in by_id[1]["error"]["message"]
        assert by_id[2]["error"]["data"]["name"] == "TIMEOUT"
        assert by_id[3]["error"]["data"] == {"name": "INVALID_PARAMS", "param": "count"}
        # The test server's own user is an admin of it: admin_only runs.
        assert "result" in by_id[4]
        assert by_id[5]["result"]["text"] == "ok"


async def test_a_client_that_leaves_cancels_its_batch() -> None:
    gate = Gate()
    async with serving([*sample_methods(), gate.method()]) as s:
        conn = await s.connect()
        await conn.send(gate_batch(3))
        await s.wait_until(lambda: gate.entered == 3)
        await conn.aclose()
        await s.wait_until(lambda: s.server.inflight == 0)
        assert (await (await s.connect()).request("fast"))["result"] == {"fast": True}


async def test_while_draining_each_member_is_judged_on_its_own() -> None:
    async with serving() as s:
        conn = await s.connect()
        s.server.stop_accepting()
        batch = [
            {"jsonrpc": "2.0", "id": "f", "method": "fast"},
            {"jsonrpc": "2.0", "id": "s", "method": "slow", "params": {"seconds": 0.01}},
        ]
        await conn.send(orjson.dumps(batch) + b"\n")
        by_id = {a["id"]: a for a in await recv_frame(conn)}
        assert by_id["f"]["result"] == {"fast": True}
        assert by_id["s"]["error"]["data"] == {"name": "SHUTTING_DOWN"}
