"""The direct write path: a frame never lands inside another one part-way out.

Answers go to the kernel without the write lock when no frame is part-way
out. This drives `Connection._write` on a real socket pair: a frame too big
for the socket buffer goes out in part, the client reads a little (so the
kernel has room again), and another frame is written before the event loop
has resumed the first writer. It must wait for the first frame's end.
"""

from __future__ import annotations

import os
import socket
import threading

import anyio
import orjson
from anyio.abc import UNIXSocketStream

from cortexd.config import ServerConfig
from cortexd.server import Authorizer, Peer, Registry, Server, ServerStats
from cortexd.server.core import Connection

BIG = 1 << 20


def _read_lines(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return data.splitlines()


async def test_a_frame_written_while_another_is_part_way_out_waits_for_its_end() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    theirs.settimeout(10)
    server = Server(
        ServerConfig(), Registry(), ServerStats(), Authorizer(lambda: None, frozenset())
    )
    stream = await UNIXSocketStream.from_socket(ours)
    conn = Connection(server, stream, ours, Peer(os.getpid(), os.getuid(), os.getgid()))
    big = orjson.dumps({"big": "x" * BIG}) + b"\n"
    small = orjson.dumps({"small": True}) + b"\n"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn._write, big)
            with anyio.fail_after(5):
                await anyio.wait_all_tasks_blocked()
            assert conn._write_lock.locked()  # the rest of the frame waits for the client
            first = theirs.recv(1 << 16)  # room in the kernel again…
            rest: list[bytes] = []
            reader = threading.Thread(target=lambda: rest.extend(_read_lines(theirs, 2)))
            reader.start()
            await conn._write(small)  # …before the first writer has run again
            await anyio.to_thread.run_sync(reader.join, 10)
        lines = (first + b"\n".join(rest) + b"\n").splitlines()
        assert [orjson.loads(line) for line in lines] == [{"big": "x" * BIG}, {"small": True}]
    finally:
        await anyio.aclose_forcefully(stream)
        theirs.close()
