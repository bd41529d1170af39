"""Requests on one connection: ordering, ids, notifications, params, streams, errors.

These run `cortexd.server.Server` in-process with test methods (a slow one, a
failing one…) on a real Unix socket; see `harness.py`.
"""

from __future__ import annotations

import shutil
from typing import Any

import anyio
import pytest

from tests.server.harness import serving


def _error(frame: dict[str, Any]) -> dict[str, Any]:
    assert "error" in frame, frame
    error = frame["error"]
    assert isinstance(error, dict)
    return error


async def test_fast_answer_overtakes_slow_one_and_ids_match() -> None:
    async with serving() as served:
        conn = await served.connect()
        await conn.send(
            {"jsonrpc": "2.0", "id": "slow-1", "method": "slow", "params": {"seconds": 1}}
        )
        await conn.send({"jsonrpc": "2.0", "id": 2, "method": "fast"})
        await conn.send({"jsonrpc": "2.0", "id": 3.5, "method": "echo", "params": {"text": "t"}})
        frames = [await conn.recv() for _ in range(3)]
        by_id = {f["id"]: f for f in frames}
        assert set(by_id) == {"slow-1", 2, 3.5}
        assert frames[-1]["id"] == "slow-1", "the slow answer must come last"
        assert by_id["slow-1"]["result"] == {"slept": 1}
        assert by_id[2]["result"] == {"fast": True}
        assert by_id[3.5]["result"]["text"] == "t"
        assert all(f["jsonrpc"] == "2.0" for f in frames)


async def test_notifications_get_no_answer() -> None:
    async with serving() as served:
        conn = await served.connect()
        # Good, unknown-method and bad-params notifications: none is answered.
        await conn.send({"jsonrpc": "2.0", "method": "fast"})
        await conn.send({"jsonrpc": "2.0", "method": "no.such.method"})
        await conn.send({"jsonrpc": "2.0", "method": "echo", "params": {"text": 5}})
        await conn.send({"jsonrpc": "2.0", "method": "slow", "params": {"seconds": 0.05}})
        await conn.send({"jsonrpc": "2.0", "method": "chatty", "params": {"count": 2}})
        await conn.send(
            {"jsonrpc": "2.0", "id": "last", "method": "slow", "params": {"seconds": 0.3}}
        )
        frame = await conn.recv()
        assert frame["id"] == "last"
        assert await conn.closed_by_server(within=0.5) is False
        assert served.stats.requests["fast"] == 1
        assert served.stats.requests["slow"] == 2
        assert served.stats.requests["chatty"] == 1


async def test_null_id_is_a_request_not_a_notification() -> None:
    async with serving() as served:
        conn = await served.connect()
        frame = await conn.request("fast", req_id=None)
        assert frame == {"jsonrpc": "2.0", "id": None, "result": {"fast": True}}


async def test_positional_params() -> None:
    async with serving() as served:
        conn = await served.connect()
        frame = await conn.request("echo", ["hi", 3, ["x"], "b"])
        assert frame["result"] == {"text": "hi", "count": 3, "tags": ["x"], "mode": "b"}
        frame = await conn.request("echo", ["hi"])
        assert frame["result"] == {"text": "hi", "count": 1, "tags": [], "mode": "a"}
        error = _error(await conn.request("echo", ["hi", 1, [], "a", "extra"]))
        assert error["code"] == -32602
        assert error["data"]["name"] == "INVALID_PARAMS"


@pytest.mark.parametrize(
    ("params", "param", "words"),
    [
        ({}, "text", "required"),
        ([], "text", "required"),
        ({"text": 5}, "text", "expected a string, got an integer"),
        ({"text": "a", "count": "3"}, "count", "expected an integer, got a string"),
        ({"text": "a", "count": True}, "count", "expected an integer, got a boolean"),
        ({"text": "a", "count": 2}, "count", "must be odd"),
        ({"text": "a", "tags": ["ok", 1]}, "tags", "item 1"),
        ({"text": "a", "mode": "z"}, "mode", "must be one of a, b"),
        ({"text": "a", "colour": "red"}, "colour", "unknown param"),
        ({"text": None}, "text", "expected a string, got null"),
        ({"seconds": 1}, "seconds", "unknown param"),
    ],
)
async def test_bad_params_name_the_param(params: Any, param: str, words: str) -> None:
    async with serving() as served:
        conn = await served.connect()
        error = _error(await conn.request("echo", params, req_id=11))
        assert error["code"] == -32602
        assert error["data"]["name"] == "INVALID_PARAMS"
        assert error["data"]["param"] == param
        assert repr(param) in error["message"]
        assert words in error["message"]


async def test_unknown_method_is_named() -> None:
    async with serving() as served:
        conn = await served.connect()
        frame = await conn.request("frobnicate", req_id="u")
        assert frame["id"] == "u"
        error = _error(frame)
        assert error["code"] == -32601
        assert error["data"] == {"name": "METHOD_NOT_FOUND", "method": "frobnicate"}
        assert "frobnicate" in error["message"]


async def test_last_request_without_newline_is_answered_after_eof() -> None:
    async with serving() as served:
        conn = await served.connect()
        await conn.send(b'{"jsonrpc":"2.0","id":1,"method":"fast"}\n')
        await conn.send(b'{"jsonrpc":"2.0","id":2,"method":"slow","params":{"seconds":0.3}}')
        await conn.stream.send_eof()
        frames = [await conn.recv(), await conn.recv()]
        assert [f["id"] for f in frames] == [1, 2]
        assert frames[1]["result"] == {"slept": 0.3}
        assert await conn.closed_by_server()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
@pytest.mark.parametrize(
    "payload",
    [b'{"jsonrpc":"2.0","id":1,"method":"fast"}\n', b'{"jsonrpc":"2.0","id":1,"method":"fast"}'],
)
async def test_socat_one_shot(payload: bytes) -> None:
    async with serving() as served:
        result = await anyio.run_process(
            ["socat", "-", f"UNIX-CONNECT:{served.path}"], input=payload
        )
        assert result.stdout == b'{"jsonrpc":"2.0","id":1,"result":{"fast":true}}\n'


async def test_stream_notifications_precede_the_answer() -> None:
    async with serving() as served:
        conn = await served.connect()
        await conn.send({"jsonrpc": "2.0", "id": "c", "method": "chatty", "params": {"count": 3}})
        frames = [await conn.recv() for _ in range(4)]
        streams, final = frames[:3], frames[3]
        assert [f["method"] for f in streams] == ["stream"] * 3
        assert [f["params"] for f in streams] == [
            {"id": "c", "seq": i, "data": {"n": i}} for i in range(3)
        ]
        assert "id" not in streams[0]
        assert final == {"jsonrpc": "2.0", "id": "c", "result": 3}


async def test_handler_bug_is_internal_error_without_details() -> None:
    async with serving() as served:
        conn = await served.connect()
        error = _error(await conn.request("broken", req_id=4))
        assert error["code"] == -32603
        assert error["data"]["name"] == "INTERNAL_ERROR"
        assert "secret" not in str(error)
        assert error["data"]["request_id"] in error["message"]
        # The connection survives a handler bug.
        assert (await conn.request("fast"))["result"] == {"fast": True}


async def test_request_deadline_answers_timeout() -> None:
    async with serving(request_timeout=0.3) as served:
        conn = await served.connect()
        error = _error(await conn.request("slow", {"seconds": 30}, req_id="t"))
        assert error["code"] == -32005
        assert error["data"] == {"name": "TIMEOUT", "seconds": 0.3}
        # A method's own deadline wins over the server's.
        error = _error(await conn.request("quick_timeout", {"seconds": 30}))
        assert error["data"] == {"name": "TIMEOUT", "seconds": 0.2}
        assert (await conn.request("slow", {"seconds": 0.01}))["result"] == {"slept": 0.01}
        assert served.server.inflight == 0
        assert served.stats.errors[("slow", "TIMEOUT")] == 1


async def test_errors_are_counted_under_the_canonical_method_name() -> None:
    async with serving() as served:
        conn = await served.connect()
        await conn.request("echo", {"text": 1})
        await conn.request("nope")
        await conn.send(b"not json\n")
        await conn.recv()
        snapshot = served.stats.snapshot()
        methods = snapshot["methods"]
        assert isinstance(methods, dict)
        assert methods["echo"]["errors"] == {"INVALID_PARAMS": 1}
        assert methods["unknown"]["errors"] == {"METHOD_NOT_FOUND": 1, "PARSE_ERROR": 1}
        assert "nope" not in methods


async def test_client_hanging_up_cancels_its_running_requests() -> None:
    cancelled = anyio.Event()

    async def wait_forever(call: Any) -> None:
        try:
            await anyio.sleep(60)
        finally:
            cancelled.set()

    from cortexd.server import Method

    async with serving([Method("wait", wait_forever, timeout=60)]) as served:
        conn = await served.connect()
        await conn.send({"jsonrpc": "2.0", "id": 1, "method": "wait"})
        await served.wait_until(lambda: served.server.inflight == 1)
        await conn.aclose()
        with anyio.fail_after(10):
            await cancelled.wait()
        assert served.server.inflight == 0


async def test_half_close_keeps_waiting_for_answers() -> None:
    async with serving() as served:
        conn = await served.connect()
        await conn.send({"jsonrpc": "2.0", "id": 1, "method": "slow", "params": {"seconds": 1}})
        await conn.stream.send_eof()
        frame = await conn.recv()
        assert frame["result"] == {"slept": 1}
