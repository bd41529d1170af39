"""An in-process `Server` on a real Unix socket, for tests that need custom methods.

The server runs in the test's own event loop with a registry of test methods
(slow, failing, chatty) bound to a real socket in a short temp dir; clients
talk to it over real connections. Whole-daemon behaviour is tested through
`tests.daemon.running_daemon` instead.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from cortexd.config import ServerConfig
from cortexd.server import (
    Authorizer,
    Call,
    Method,
    Param,
    Peer,
    Registry,
    Server,
    ServerStats,
    bind_socket,
    remove_socket,
)
from tests.daemon import short_tmpdir

MAX_FRAME = 16 * 1024 * 1024
BIG_ANSWER_BYTES = 256 * 1024
POLL_INTERVAL = 0.01


async def _slow(call: Call) -> dict[str, Any]:
    await anyio.sleep(call.params["seconds"])
    return {"slept": call.params["seconds"]}


def _fast(call: Call) -> dict[str, Any]:
    return {"fast": True}


async def _echo(call: Call) -> Any:
    return call.params


async def _big(call: Call) -> str:
    return "x" * BIG_ANSWER_BYTES


async def _chatty(call: Call) -> int:
    for i in range(call.params["count"]):
        await call.stream({"n": i})
    return int(call.params["count"])


async def _broken(call: Call) -> None:
    raise RuntimeError("secret detail that must not reach the client")


def _odd(value: int) -> str | None:
    return None if value % 2 else "must be odd"


def sample_methods() -> list[Method]:
    """The methods the in-process tests call."""
    return [
        Method("fast", _fast, inline=True, during_shutdown=True),
        Method("slow", _slow, params=(Param("seconds", float, required=True),)),
        Method(
            "echo",
            _echo,
            params=(
                Param("text", str, required=True),
                Param("count", int, default=1, check=_odd),
                Param("tags", list, items=str, default=[]),
                Param("mode", str, default="a", choices=("a", "b")),
            ),
        ),
        Method("big", _big),
        Method("chatty", _chatty, params=(Param("count", int, default=3),)),
        Method("broken", _broken),
        Method("quick_timeout", _slow, params=(Param("seconds", float),), timeout=0.2),
        Method("admin_only", _echo, access="admin"),
    ]


def own_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


@dataclass
class Served:
    server: Server
    stats: ServerStats
    path: str
    conns: list[Conn] = field(default_factory=list)

    async def connect(self) -> Conn:
        """A new connection, closed when `serving` ends."""
        conn = await Conn.open(self.path)
        self.conns.append(conn)
        return conn

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Poll `predicate` until true; fail after `within` seconds."""
        with anyio.fail_after(within):
            while True:
                if predicate():
                    return
                await anyio.sleep(POLL_INTERVAL)


class Conn:
    """A raw NDJSON client connection for tests: send frames, read frames."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)

    @classmethod
    async def open(cls, path: str) -> Conn:
        return cls(await anyio.connect_unix(path))

    async def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else orjson.dumps(message) + b"\n"
        await self.stream.send(data)

    async def request(self, method: str, params: Any = None, req_id: Any = 1) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await self.recv()

    async def recv(self, within: float = 10.0) -> dict[str, Any]:
        with anyio.fail_after(within):
            line = await self.reader.receive_until(b"\n", MAX_FRAME)
        value = orjson.loads(line)
        assert isinstance(value, dict)
        return value

    async def closed_by_server(self, within: float = 10.0) -> bool:
        """True once the server closes (EOF or reset) within `within` s; frames are skipped."""
        with anyio.move_on_after(within):
            try:
                while True:
                    await self.reader.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return True
        return False

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)


@contextlib.asynccontextmanager
async def serving(
    methods: Iterable[Method] | None = None,
    *,
    authorizer: Authorizer | None = None,
    peer_of: Callable[[socket.socket], Peer] = Peer.of,
    **limits: Any,
) -> AsyncIterator[Served]:
    """Run a `Server` with `methods` (default: `sample_methods()`) and `limits` on a temp socket.

    `authorizer` and `peer_of` stand in for the daemon's groups and for the
    credentials of the connecting process.
    """
    workdir = short_tmpdir()
    path = os.path.join(workdir, "s.sock")
    config = ServerConfig(socket_path=path, socket_group=own_group(), **limits)
    bound = bind_socket(config)
    registry = Registry()
    registry.add(sample_methods() if methods is None else methods)
    stats = ServerStats()
    server = Server(
        config,
        registry,
        stats,
        authorizer or Authorizer(lambda: None, frozenset()),
        peer_of=peer_of,
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve, bound.sock)
            served = Served(server, stats, path)
            try:
                yield served
            finally:
                for conn in served.conns:
                    await conn.aclose()
                # Let the server see those closes before cancelling it: a read
                # woken and cancelled in the same loop iteration makes asyncio
                # log a harmless InvalidStateError from inside anyio.
                with anyio.move_on_after(5):
                    await served.wait_until(lambda: stats.connections_open == 0)
                server.close_connections()
    finally:
        remove_socket(bound)
        shutil.rmtree(workdir, ignore_errors=True)
