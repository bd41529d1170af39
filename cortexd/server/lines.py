"""Reading newline-delimited frames straight from a non-blocking Unix socket.

anyio's `UNIXSocketStream.receive` yields to the event loop before every
`recv`, even when data is waiting; under a closed-loop client that is one
extra turn of the loop per request, about a tenth of a `ping`. This reader
tries `recv` first and waits for readability only when the kernel has
nothing, which is what `BufferedByteReceiveStream.receive_until` does on top
of that stream, with the same outcomes (`DelimiterNotFound`, `IncompleteRead`).
Fairness is the caller's: a reader that never waits never yields, so the
connection loop yields every few lines.
"""

from __future__ import annotations

import socket

import anyio

RECV_BYTES = 65536


class LineReader:
    """Buffered `receive_until` over a raw non-blocking socket."""

    __slots__ = ("_buffer", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

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
            # The delimiter cannot start before the last len(delimiter)-1 bytes seen.
            searched = max(0, len(buffer) - len(delimiter) + 1)
            try:
                data = self._sock.recv(RECV_BYTES)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            except OSError as exc:
                if self._sock.fileno() < 0:
                    raise anyio.ClosedResourceError from None
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.IncompleteRead
            buffer += data
