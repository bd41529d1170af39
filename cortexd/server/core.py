"""The JSON-RPC server: accept, frame, dispatch, answer.

One task per connection reads newline-delimited requests. Cheap `inline`
methods are answered from the reading task; every other request runs in its
own task so answers go out as they finish, matched by `id`. A connection may
have at most `max_inflight_per_connection` requests running; past that the
reader stops reading, which pushes back on that client alone. Every write has
a deadline: a client that stops reading loses its connection, nobody else
waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from anyio.abc import SocketListener, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from cortexd.config import ServerConfig
from cortexd.protocol import (
    JSONRPC,
    Busy,
    CortexError,
    InternalError,
    InvalidRequest,
    ParseError,
    PermissionDenied,
    ShuttingDown,
    Timeout,
    TooLarge,
)
from cortexd.server.call import Call, Peer
from cortexd.server.registry import Method, Registry
from cortexd.server.stats import UNKNOWN_METHOD, ServerStats

log = logging.getLogger(__name__)

_NEWLINE = b"\n"
_ACCEPT_RETRY_DELAY = 0.1
_REFUSE_WRITE_TIMEOUT = 1.0


def _dumps(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + _NEWLINE


class Authorizer:
    """Decides who may call what, from the peer's uid and groups."""

    def __init__(self, admin_gid: Callable[[], int | None], journal_gids: frozenset[int]) -> None:
        self._admin_gid = admin_gid
        self._journal_gids = journal_gids
        self._own_uid = os.getuid()

    def is_admin(self, peer: Peer) -> bool:
        # The daemon's own user is an admin of it: a per-user `make run`
        # daemon must obey the user who started it.
        return peer.uid in (0, self._own_uid) or peer.in_group(self._admin_gid())

    def check(self, method: Method, peer: Peer) -> bool:
        if method.access == "read":
            return True
        if self.is_admin(peer):
            return True
        if method.access == "journal":
            return bool(self._journal_gids & peer.groups())
        return False


class Server:
    """Serves the registry's methods on a listening Unix socket."""

    def __init__(
        self,
        config: ServerConfig,
        registry: Registry,
        stats: ServerStats,
        authorizer: Authorizer,
    ) -> None:
        self.config = config
        self.registry = registry
        self.stats = stats
        self.authorizer = authorizer
        self.shutting_down = False
        self._inflight = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._accept_scope: anyio.CancelScope | None = None
        self._connections: TaskGroup | None = None

    @property
    def inflight(self) -> int:
        return self._inflight

    def apply_config(self, config: ServerConfig) -> None:
        """Take reloaded limits; socket path, group and max connections need a restart."""
        self.config = config

    async def serve(
        self,
        sock: socket.socket,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until `stop_accepting`, then wait for them to close.

        On cancellation every connection is closed.
        """
        listener = await SocketListener.from_socket(sock)
        async with listener, anyio.create_task_group() as connections:
            self._connections = connections
            with anyio.CancelScope() as accept_scope:
                self._accept_scope = accept_scope
                task_status.started()
                await self._accept_loop(listener, connections)

    def stop_accepting(self) -> None:
        """Refuse new requests (SHUTTING_DOWN) and stop accepting connections."""
        self.shutting_down = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()

    async def drain(self, grace: float) -> bool:
        """Wait up to `grace` seconds for in-flight requests; True if all finished."""
        with anyio.move_on_after(grace):
            await self._idle.wait()
            return True
        return self._inflight == 0

    def close_connections(self) -> None:
        """Cancel every connection, finishing `serve`."""
        if self._connections is not None:
            self._connections.cancel_scope.cancel()

    async def _accept_loop(self, listener: SocketListener, connections: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the
                # pending client stays in the backlog until we can take it.
                log.error("accept failed: %s", exc)
                await anyio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            if self.stats.connections_open >= self.config.max_connections:
                connections.start_soon(self._refuse, stream)
                continue
            connections.start_soon(self._handle_connection, stream)

    async def _refuse(self, stream: SocketStream) -> None:
        self.stats.connections_refused += 1
        limit = self.config.max_connections
        error = Busy(f"too many connections (limit {limit}); try again later", limit=limit)
        with anyio.move_on_after(_REFUSE_WRITE_TIMEOUT):
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await stream.send(
                    _dumps({"jsonrpc": JSONRPC, "id": None, "error": error.to_error()})
                )
        await anyio.aclose_forcefully(stream)

    async def _handle_connection(self, stream: SocketStream) -> None:
        self.stats.connections_open += 1
        self.stats.connections_total += 1
        try:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            peer = Peer.of(raw)
            conn = Connection(self, stream, peer)
            await conn.run()
        except Exception:  # isolation boundary: one connection's bug is logged, not fatal
            log.exception("connection handler failed")
        finally:
            self.stats.connections_open -= 1
            await anyio.aclose_forcefully(stream)

    def _begin(self) -> None:
        if self._inflight == 0:
            self._idle = anyio.Event()
        self._inflight += 1

    def _end(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()


class Connection:
    """One client connection: a reading loop and the requests it started."""

    def __init__(self, server: Server, stream: SocketStream, peer: Peer) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        self._reader = BufferedByteReceiveStream(stream)
        self._write_lock = anyio.Lock()
        self._slots = anyio.Semaphore(server.config.max_inflight_per_connection)
        self._pending = 0
        self._tasks: TaskGroup | None = None
        self._admin: bool | None = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            await self._read_loop(tasks)
        # The task group waited for every request started on this connection,
        # so a client that half-closes after its last request still gets answers.

    async def _read_loop(self, tasks: TaskGroup) -> None:
        cfg = self.server.config
        while True:
            line: bytes | None = None
            with anyio.move_on_after(cfg.idle_timeout):
                try:
                    line = await self._reader.receive_until(_NEWLINE, cfg.max_request_bytes)
                except anyio.DelimiterNotFound:
                    await self._send_error(None, TooLarge(cfg.max_request_bytes), "")
                    return
                except anyio.IncompleteRead:
                    rest = bytes(self._reader.buffer)
                    if rest.strip():
                        await self._on_line(rest, tasks)
                    return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
            if line is None:
                if self._pending == 0:
                    log.debug("closing idle connection", extra={"PEER_PID": self.peer.pid})
                    return
                continue
            if len(line) > cfg.max_request_bytes:
                await self._send_error(None, TooLarge(cfg.max_request_bytes), "")
                return
            await self._on_line(line, tasks)

    async def _on_line(self, line: bytes, tasks: TaskGroup) -> None:
        if not line.strip():
            return
        started = time.perf_counter()
        try:
            request = _parse(line)
        except CortexError as exc:
            await self._send_error(None, exc, UNKNOWN_METHOD, started)
            return
        req_id = request.get("id")
        name = request["method"]
        server = self.server
        label = name if server.registry.known(name) else UNKNOWN_METHOD
        try:
            method = server.registry.get(name)
            if server.shutting_down and not method.during_shutdown:
                raise ShuttingDown()
            is_admin = self._is_admin()
            if not server.authorizer.check(method, self.peer):
                log.warning(
                    "denied %s to uid %d pid %d",
                    name,
                    self.peer.uid,
                    self.peer.pid,
                    extra={"PEER_UID": self.peer.uid, "PEER_PID": self.peer.pid},
                )
                raise PermissionDenied(
                    f"{method.name} needs uid 0 or membership in the admin group",
                    method=method.name,
                    uid=self.peer.uid,
                )
            params = method.bind(request.get("params"))
        except CortexError as exc:
            await self._send_error(req_id, exc, label, started, notify="id" not in request)
            return
        call = Call(
            method=method.name,
            params=params,
            peer=self.peer,
            id=req_id,
            is_admin=is_admin,
            _sender=self._send_stream,
        )
        if method.inline:
            await self._answer(method, call, "id" not in request, started, inline=True)
            return
        await self._slots.acquire()
        self._pending += 1
        server._begin()
        tasks.start_soon(self._run, method, call, "id" not in request, started)

    async def _run(self, method: Method, call: Call, notify: bool, started: float) -> None:
        try:
            await self._answer(method, call, notify, started, inline=False)
        finally:
            self._pending -= 1
            self.server._end()
            self._slots.release()

    async def _answer(
        self, method: Method, call: Call, notify: bool, started: float, *, inline: bool
    ) -> None:
        deadline = method.timeout or self.server.config.request_timeout
        try:
            if inline:
                result = method.handler(call)
            else:
                with anyio.fail_after(deadline):
                    result = await method.handler(call)
        except TimeoutError:
            await self._send_error(call.id, Timeout(deadline), method.name, started, notify=notify)
        except CortexError as exc:
            await self._send_error(call.id, exc, method.name, started, notify=notify)
        except Exception:  # isolation boundary: a handler bug answers INTERNAL_ERROR
            rid = call.request_id
            log.exception(
                "%s failed", method.name, extra={"REQUEST_ID": rid, "METHOD": method.name}
            )
            error = InternalError(
                f"internal error in {method.name} (request_id {rid})", request_id=rid
            )
            await self._send_error(call.id, error, method.name, started, notify=notify)
        else:
            self.server.stats.record(method.name, None, time.perf_counter() - started)
            if not notify:
                await self._write(_dumps({"jsonrpc": JSONRPC, "id": call.id, "result": result}))

    def _is_admin(self) -> bool:
        if self._admin is None:
            self._admin = self.server.authorizer.is_admin(self.peer)
        return self._admin

    async def _send_stream(self, params: dict[str, Any]) -> None:
        await self._write(_dumps({"jsonrpc": JSONRPC, "method": "stream", "params": params}))

    async def _send_error(
        self,
        req_id: Any,
        exc: CortexError,
        label: str,
        started: float | None = None,
        *,
        notify: bool = False,
    ) -> None:
        elapsed = time.perf_counter() - started if started is not None else 0.0
        self.server.stats.record(label or UNKNOWN_METHOD, exc.code.name, elapsed)
        if notify:
            return
        await self._write(_dumps({"jsonrpc": JSONRPC, "id": req_id, "error": exc.to_error()}))

    async def _write(self, data: bytes) -> None:
        """Send one frame; a client that stops reading past the write deadline is cut off."""
        try:
            with anyio.fail_after(self.server.config.write_timeout):
                async with self._write_lock:
                    await self.stream.send(data)
        except TimeoutError:
            log.warning("client pid %d stopped reading; closing its connection", self.peer.pid)
            self._abort()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._abort()

    def _abort(self) -> None:
        """The peer is gone: cancel everything this connection started."""
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()


def _parse(line: bytes) -> dict[str, Any]:
    """Decode one frame into a request object or raise the matching protocol error."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"request is not valid UTF-8 (byte {exc.start})") from None
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"request is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if isinstance(request, list):
        raise InvalidRequest("batch requests are not supported; send one request per line")
    if not isinstance(request, dict):
        raise InvalidRequest("a request must be a JSON object")
    if request.get("jsonrpc") != JSONRPC:
        raise InvalidRequest('"jsonrpc" must be "2.0"')
    method = request.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidRequest('"method" must be a non-empty string')
    if "id" in request:
        req_id = request["id"]
        if isinstance(req_id, bool) or not isinstance(req_id, str | int | float | type(None)):
            raise InvalidRequest('"id" must be a string, a number or null')
    params = request.get("params")
    if params is not None and not isinstance(params, dict | list):
        raise InvalidRequest('"params" must be an object or an array')
    return request
