"""A small HTTP/1.1 listener for scrapers and probes: /metrics, /health, /ready.

Only GET and HEAD, one request per connection (`Connection: close`), a read
deadline and a cap on connections, so a slow or hostile client costs one slot
for at most `READ_DEADLINE` seconds and never touches the Unix socket. An
answer of a kilobyte or more goes gzipped to a client that asks for it, as
Prometheus does: a scrape of about 25 KB becomes about 3.5 KB.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.stapled import MultiListener

from cortexd.server.transport import bind_tcp

log = logging.getLogger(__name__)

READ_DEADLINE = 5.0
WRITE_DEADLINE = 10.0
MAX_HEAD = 8192
MAX_CONNECTIONS = 32
# Smaller answers go as they are: gzip's header alone is 18 bytes.
GZIP_MIN = 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS.update({503: "Service Unavailable"})


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str


Handler = Callable[[], Awaitable[Response]]


class HttpListener:
    """Serves `routes` (path → handler) on `host:port` until cancelled."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler]) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self.bound_port: int | None = None
        self._slots = anyio.Semaphore(MAX_CONNECTIONS)

    async def serve(
        self,
        bound: MultiListener[SocketStream] | None = None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on `bound` (the daemon binds it before READY=1), or bind
        `host:port` first; `task_status.started()` once bound.

        Raises:
            OSError: the port is taken.
        """
        listener = bound or await bind_tcp(self.host, self.port)
        async with listener:
            sock = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_address)
            self.bound_port = int(sock[1])
            log.info("metrics and health on http://%s:%d", self.host, self.bound_port)
            task_status.started()
            await listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        async with stream:
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                await self._send(stream, Response(503, b"busy\n", "text/plain"), head=False)
                return
            try:
                await self._handle(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, TimeoutError):
                pass  # the client went away or was too slow; nothing to answer
            except Exception:  # isolation boundary: one request's bug never stops the listener
                log.exception("metrics HTTP request failed")
            finally:
                self._slots.release()

    async def _handle(self, stream: SocketStream) -> None:
        head = b""
        with anyio.fail_after(READ_DEADLINE):
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                head += await stream.receive(MAX_HEAD)
                if len(head) > MAX_HEAD:
                    await self._send(stream, Response(400, b"too large\n", "text/plain"), False)
                    return
        request_line = head.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._send(stream, Response(400, b"bad request\n", "text/plain"), head=False)
            return
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            await self._send(stream, Response(405, b"GET only\n", "text/plain"), head=False)
            return
        handler = self.routes.get(target.split("?", 1)[0])
        response = (
            Response(404, b"not found\n", "text/plain") if handler is None else await handler()
        )
        await self._send(stream, response, head=method == "HEAD", gzip=_accepts_gzip(head))

    async def _send(
        self, stream: SocketStream, response: Response, head: bool, *, gzip: bool = False
    ) -> None:
        reason = _REASONS.get(response.status, "")
        body = response.body
        encoding = ""
        if gzip and len(body) >= GZIP_MIN:
            # Level 1: an exposition is repetitive text, so the fastest level
            # already takes a scrape from about 25 KB to about 3.5 KB, in
            # about a tenth of a millisecond.
            packer = zlib.compressobj(1, zlib.DEFLATED, 31)
            body = packer.compress(body) + packer.flush()
            encoding = "Content-Encoding: gzip\r\n"
        lines = (
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{encoding}"
            "Vary: Accept-Encoding\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        with anyio.fail_after(WRITE_DEADLINE):
            await stream.send(lines.encode("latin-1") + (b"" if head else body))


def _accepts_gzip(head: bytes) -> bool:
    """Whether the request's Accept-Encoding takes gzip (Prometheus asks for it)."""
    for line in head.split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"accept-encoding":
            continue
        for item in value.decode("latin-1").split(","):
            coding, _, params = item.strip().partition(";")
            if coding.strip().lower() not in ("gzip", "*"):
                continue
            q = params.strip().lower()
            return not (q.startswith("q=") and _quality(q[2:]) == 0.0)
    return False


def _quality(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0
