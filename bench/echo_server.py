"""A minimal anyio NDJSON server: the practical ceiling for a Python socket server.

It does the least a JSON-RPC server can do — read one line, decode it, write
one JSON-RPC-shaped answer line — on the same event loop library and stream
classes as the daemon, so the gap between the two is the daemon's own work.

Run: `python bench/echo_server.py SOCKET_PATH`; prints `READY` once listening.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import anyio
import orjson
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

MAX_LINE = 65536
_NEWLINE = b"\n"


async def _handle(stream: SocketStream) -> None:
    reader = BufferedByteReceiveStream(stream)
    async with stream:
        with contextlib.suppress(
            anyio.IncompleteRead,
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.DelimiterNotFound,
            OSError,
        ):
            while True:
                line = await reader.receive_until(_NEWLINE, MAX_LINE)
                request: dict[str, Any] = orjson.loads(line)
                answer = {
                    "jsonrpc": "2.0",
                    "id": request.get("id"),
                    "result": {"echo": request.get("method")},
                }
                await stream.send(orjson.dumps(answer) + _NEWLINE)


async def _serve(path: str) -> None:
    listener = await anyio.create_unix_listener(path)
    print("READY", flush=True)
    await listener.serve(_handle)


def main(argv: list[str]) -> int:
    """Serve on `argv[1]` until killed."""
    if len(argv) != 2:
        print("usage: echo_server.py SOCKET_PATH", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_serve, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
