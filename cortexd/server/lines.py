"""Reading newline-delimited frames straight from a non-blocking Unix socket.

anyio's `UNIXSocketStream.receive` yields to the event loop before every
`recv`, even when data is waiting, and registers the socket with the
selector for each wait and removes it after: under a closed-loop client that
is one extra turn of the loop and two `epoll_ctl` calls per request, a
quarter of a `ping`. This reader keeps a readiness callback registered
between requests and reads in it, as asyncio's own transports do: the socket
is drained before the loop polls again, so a request costs one `recv`, no
failed one, and no second wake-up for data the woken reader is about to take.
It has the outcomes of `BufferedByteReceiveStream.receive_until`
(`DelimiterNotFound`, `IncompleteRead`). Fairness is the caller's: a reader
with lines buffered never waits and never yields, so the connection loop
yields every few lines.
"""

from __future__ import annotations

import asyncio
import socket

import anyio

RECV_BYTES = 65536


class LineReader:
    """Buffered `receive_until` over a raw non-blocking socket; `close()` before the socket."""

    __slots__ = ("_buffer", "_eof", "_error", "_fd", "_loop", "_sock", "_waiter")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._buffer = bytearray()
        self._eof = False
        self._error: OSError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def buffer(self) -> bytes:
        """What was received and not yet returned (a last line without its newline)."""
        return bytes(self._buffer)

    async def receive_until(self, delimiter: bytes, max_bytes: int) -> bytes:
        """The bytes before the next `delimiter`, which is consumed too.

        Raises:
            anyio.DelimiterNotFound: `max_bytes` arrived without the delimiter.
            anyio.IncompleteRead: the peer closed before sending the delimiter.
            anyio.BrokenResourceError: the connection failed.
            anyio.ClosedResourceError: the socket was closed under the reader.
        On cancellation nothing received is lost; it stays in the buffer.
        """
        buffer = self._buffer
        searched = 0
        while True:
            index = buffer.find(delimiter, searched)
            if index >= 0:
                line = bytes(buffer[:index])
                del buffer[: index + len(delimiter)]
                return line
            if len(buffer) >= max_bytes:
                raise anyio.DelimiterNotFound(max_bytes)
            if self._error is not None:
                if self._sock.fileno() < 0:
                    raise anyio.ClosedResourceError
                raise anyio.BrokenResourceError from self._error
            if self._eof:
                raise anyio.IncompleteRead
            # The delimiter cannot start before the last len(delimiter)-1 bytes seen.
            searched = max(0, len(buffer) - len(delimiter) + 1)
            await self._readable()

    async def _readable(self) -> None:
        """Wait until `_on_readable` has read something, an EOF or an error."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            loop.add_reader(self._fd, self._on_readable)
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            # Nobody waits (the connection is at its in-flight limit): epoll
            # is level-triggered, so stop watching until a read waits, which
            # leaves the rest in the kernel's buffer, pushing back on the client.
            self.close()
            return
        if waiter.done():
            # Woken already: the reader runs before the loop polls again.
            return
        try:
            data = self._sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._error = exc
        else:
            if data:
                self._buffer += data
            else:
                self._eof = True
        waiter.set_result(None)

    def close(self) -> None:
        """Stop watching the socket; call before it is closed."""
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
