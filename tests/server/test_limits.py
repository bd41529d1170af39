"""Limits and misbehaving clients: idle and write deadlines, connection cap,
slow-loris and non-reading clients, oversized lines, draining.

In-process `Server` on real Unix sockets (see `harness.py`); the margins are
generous because the machine is shared with other test runs.
"""

from __future__ import annotations

import os

import anyio
import orjson

from tests.server.harness import BIG_ANSWER_BYTES, serving


async def test_idle_connection_is_closed() -> None:
    async with serving(idle_timeout=0.3) as served:
        conn = await served.connect()
        assert (await conn.request("fast"))["result"] == {"fast": True}
        assert await conn.closed_by_server(within=10)
        await served.wait_until(lambda: served.stats.connections_open == 0)


async def test_idle_timeout_spares_a_connection_with_a_request_in_flight() -> None:
    async with serving(idle_timeout=0.2, request_timeout=10) as served:
        conn = await served.connect()
        # The request runs for several idle periods; the connection must stay.
        frame = await conn.request("slow", {"seconds": 1.0})
        assert frame["result"] == {"slept": 1.0}
        # Idle again afterwards: now it is closed.
        assert await conn.closed_by_server(within=10)


async def test_excess_connections_get_busy_and_are_closed() -> None:
    async with serving(max_connections=2) as served:
        first, second = await served.connect(), await served.connect()
        assert (await first.request("fast"))["result"]
        assert (await second.request("fast"))["result"]
        third = await served.connect()
        frame = await third.recv()
        assert frame["id"] is None
        assert frame["error"]["code"] == -32008
        assert frame["error"]["data"] == {"name": "BUSY", "limit": 2, "scope": "all"}
        assert "too many connections" in frame["error"]["message"]
        assert await third.closed_by_server(within=10)
        assert served.stats.connections_refused == 1
        # Existing connections are untouched, and a freed slot is usable again.
        assert (await first.request("fast"))["result"]
        await second.aclose()
        await served.wait_until(lambda: served.stats.connections_open == 1)
        fourth = await served.connect()
        assert (await fourth.request("fast"))["result"] == {"fast": True}


async def test_slow_loris_does_not_delay_another_client() -> None:
    line = orjson.dumps({"jsonrpc": "2.0", "id": "loris", "method": "fast"}) + b"\n"
    async with serving() as served:
        loris = await served.connect()
        other = await served.connect()
        loris_done = anyio.Event()

        async def trickle() -> None:
            for i in range(len(line)):
                await loris.send(line[i : i + 1])
                await anyio.sleep(0.05)
            loris_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle)
            await anyio.sleep(0.2)  # the loris has started its line
            for i in range(50):
                frame = await other.request(
                    "fast",
                    req_id=i,
                )
                assert frame == {"jsonrpc": "2.0", "id": i, "result": {"fast": True}}
            assert not loris_done.is_set(), "the other client must not wait for the loris"
        assert (await loris.recv())["id"] == "loris"


async def test_client_that_never_reads_is_cut_off_without_delaying_others() -> None:
    async with serving(write_timeout=0.5, request_timeout=30) as served:
        hog = await served.connect()
        good = await served.connect()
        request = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "big"}) + b"\n"
        # 200 answers of 256 KiB each is far more than a socket buffer holds.
        await hog.send(request * 200)
        await served.wait_until(lambda: served.server.inflight > 0)
        for i in range(20):
            assert (await good.request("fast", req_id=i))["result"] == {"fast": True}
        # The hog is disconnected by the write deadline; the good client stays.
        await served.wait_until(lambda: served.stats.connections_open == 1, within=30)
        await served.wait_until(lambda: served.server.inflight == 0, within=30)
        assert (await good.request("fast"))["result"] == {"fast": True}
        received = 0
        with anyio.fail_after(30):
            try:
                while chunk := await hog.stream.receive():
                    received += len(chunk)
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                pass
        assert received < 200 * BIG_ANSWER_BYTES


async def test_line_of_exactly_the_limit_is_served_and_one_more_byte_is_too_large() -> None:
    limit = 1024
    async with serving(max_request_bytes=limit) as served:
        base = b'{"jsonrpc":"2.0","id":1,"method":"fast"}'
        exact = base + b" " * (limit - len(base))
        conn = await served.connect()
        await conn.send(exact + b"\n")
        assert (await conn.recv())["result"] == {"fast": True}
        await conn.send(exact + b" \n")
        frame = await conn.recv()
        assert frame["id"] is None
        assert frame["error"]["code"] == -32006
        assert frame["error"]["data"] == {"name": "TOO_LARGE", "limit": limit}
        assert await conn.closed_by_server()


async def test_too_large_closes_even_with_requests_in_flight() -> None:
    async with serving(max_request_bytes=1024, request_timeout=60) as served:
        conn = await served.connect()
        await conn.send({"jsonrpc": "2.0", "id": 1, "method": "slow", "params": {"seconds": 60}})
        await served.wait_until(lambda: served.server.inflight == 1)
        await conn.send(b"x" * 5000)
        assert (await conn.recv())["error"]["data"]["name"] == "TOO_LARGE"
        assert await conn.closed_by_server(within=10)
        await served.wait_until(lambda: served.server.inflight == 0)


async def test_shutting_down_refuses_new_requests_while_draining() -> None:
    async with serving(request_timeout=30) as served:
        busy = await served.connect()
        await busy.send(
            {"jsonrpc": "2.0", "id": "long", "method": "slow", "params": {"seconds": 1}}
        )
        await served.wait_until(lambda: served.server.inflight == 1)
        served.server.stop_accepting()
        late = await served.connect()  # connects during the drain: told why, not hung
        frame = await late.request("slow", {"seconds": 0.01}, req_id=9)
        assert frame["id"] == 9
        assert frame["error"]["code"] == -32007
        assert frame["error"]["data"] == {"name": "SHUTTING_DOWN"}
        same = await busy.request("echo", {"text": "x"}, req_id=10)
        assert same["error"]["data"]["name"] == "SHUTTING_DOWN"
        # Liveness methods still answer while draining.
        assert (await late.request("fast"))["result"] == {"fast": True}
        assert await served.server.drain(10) is True
        assert (await busy.recv())["result"] == {"slept": 1}


async def test_drain_reports_requests_still_running() -> None:
    async with serving(request_timeout=60) as served:
        conn = await served.connect()
        await conn.send({"jsonrpc": "2.0", "id": 1, "method": "slow", "params": {"seconds": 60}})
        await served.wait_until(lambda: served.server.inflight == 1)
        served.server.stop_accepting()
        assert await served.server.drain(0.2) is False
        served.server.close_connections()
        assert await conn.closed_by_server()


async def test_per_connection_inflight_cap_pushes_back_on_that_client_only() -> None:
    async with serving(max_inflight_per_connection=2, request_timeout=30) as served:
        greedy = await served.connect()
        other = await served.connect()
        for i in range(4):
            await greedy.send(
                {"jsonrpc": "2.0", "id": i, "method": "slow", "params": {"seconds": 0.5}}
            )
        await served.wait_until(lambda: served.server.inflight == 2)
        assert served.server.inflight == 2  # the other two wait, unread
        assert (await other.request("fast"))["result"] == {"fast": True}
        ids = sorted([(await greedy.recv())["id"] for _ in range(4)])
        assert ids == [0, 1, 2, 3]


async def test_socket_file_mode_and_group() -> None:
    async with serving() as served:
        st = os.stat(served.path)
        assert st.st_mode & 0o777 == 0o660
        assert st.st_gid == os.getgid()
