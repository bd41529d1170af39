"""A cancelled client call cancels its request on the server: inference requests by
their request_id, others by closing the connection; an interrupted blocking
call closes its connection. Against an in-process server on a real socket
(tests/inference/test_client_cancel.py does the same with the real model)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from cortexctl import AsyncClient, Client
from cortexd.server import Call, Method, Param
from tests.server.harness import Served, serving

HOLD_SECONDS = 60.0
REQUEST_ID = "job-1"


@dataclass
class Seen:
    """What the server's handlers saw."""

    started: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    stream_asked: list[bool] = field(default_factory=list)
    cancel_requests: list[str] = field(default_factory=list)
    cancel_asked: anyio.Event = field(default_factory=anyio.Event)


def methods(seen: Seen) -> list[Method]:
    async def hold(call: Call) -> dict[str, Any]:
        seen.started.append(call.method)
        try:
            if call.params["stream"]:
                await call.stream({"waiting": True})
            await anyio.sleep(HOLD_SECONDS)
        except anyio.get_cancelled_exc_class():
            seen.cancelled.append(call.method)
            raise
        return {}

    async def chat(call: Call) -> dict[str, Any]:
        # Stands in for the inference engine: names its request, then runs
        # until inference.cancel names it.
        seen.stream_asked.append(call.params["stream"])
        if call.params["stream"]:
            await call.stream({"request_id": REQUEST_ID, "position": 0, "queued": 1})
        seen.started.append(call.method)
        with anyio.fail_after(HOLD_SECONDS):
            await seen.cancel_asked.wait()
        return {"text": "", "stop_reason": "cancelled"}

    async def cancel(call: Call) -> dict[str, Any]:
        seen.cancel_requests.append(call.params["request_id"])
        seen.cancel_asked.set()
        return {"request_id": call.params["request_id"], "phase": "generate"}

    async def short(call: Call) -> dict[str, Any]:
        await anyio.sleep(call.params["seconds"])
        return {"slept": call.params["seconds"]}

    def ping(call: Call) -> dict[str, Any]:
        return {"pong": True}

    return [
        Method("hold", hold, params=(Param("stream", bool, default=False),)),
        Method(
            "inference.chat",
            chat,
            params=(Param("messages", list, default=[]), Param("stream", bool, default=False)),
        ),
        Method("inference.cancel", cancel, params=(Param("request_id", str, required=True),)),
        Method("short", short, params=(Param("seconds", float, required=True),)),
        Method("ping", ping, inline=True),
    ]


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[tuple[Served, Seen]]:
    # Not a fixture: the server's task group must end in the task that began it.
    seen = Seen()
    async with serving(methods(seen), request_timeout=HOLD_SECONDS * 2) as server:
        yield server, seen


async def test_a_cancelled_inference_call_is_named_to_inference_cancel() -> None:
    async with served() as (server, seen), AsyncClient(server.path) as client:
        task = asyncio.create_task(client.call("inference.chat", {"messages": []}))
        await server.wait_until(lambda: "inference.chat" in seen.started)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_until(lambda: seen.cancel_requests == [REQUEST_ID])
        # The client asked for the stream itself, to learn the request's id,
        # and kept its connection: the cancellation named the request.
        assert seen.stream_asked == [True]
        assert (await client.call("ping"))["pong"] is True
        assert server.stats.connections_total == 1


async def test_a_cancelled_call_alone_on_its_connection_closes_it() -> None:
    async with served() as (server, seen), AsyncClient(server.path) as client:
        task = asyncio.create_task(client.call("hold"))
        await server.wait_until(lambda: seen.started == ["hold"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The server saw the client hang up and cancelled the handler.
        await server.wait_until(lambda: seen.cancelled == ["hold"])
        # The next call opens a new connection.
        assert (await client.call("ping"))["pong"] is True
        assert server.stats.connections_total == 2


async def test_cancelling_one_call_leaves_the_others_on_the_connection() -> None:
    async with served() as (server, seen), AsyncClient(server.path) as client:
        held = asyncio.create_task(client.call("hold"))
        other = asyncio.create_task(client.call("short", {"seconds": 0.5}))
        await server.wait_until(lambda: seen.started == ["hold"])
        held.cancel()
        assert await other == {"slept": 0.5}
        assert server.stats.connections_total == 1


async def test_an_interrupted_blocking_call_closes_its_connection() -> None:
    async with served() as (server, seen):
        client = Client(server.path, timeout=HOLD_SECONDS)

        def interrupted() -> None:
            def ctrl_c(data: Any) -> None:
                raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                client.call("hold", {"stream": True}, on_stream=ctrl_c)

        await anyio.to_thread.run_sync(interrupted)
        await server.wait_until(lambda: seen.cancelled == ["hold"])
        # The same client reconnects for its next call.
        assert (await anyio.to_thread.run_sync(client.call, "ping"))["pong"] is True
        assert server.stats.connections_total == 2
        client.close()
