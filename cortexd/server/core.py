"""The JSON-RPC server: accept, frame, dispatch, answer.

One task per connection reads newline-delimited requests. Cheap `inline`
methods are answered from the reading task; every other request runs in its
own task so answers go out as they finish, matched by `id`. A connection may
have at most `max_inflight_per_connection` requests running; past that the
reader stops reading, which pushes back on that client alone. A batch (a JSON
array of requests) is dispatched member by member under the same limit, and
its answers go out together, as one array, once the last member finished.
Every write has a deadline: a client that stops reading loses its connection,
nobody else waits for it.

Connections are admitted by who asks (`Admission`): a uid that is not an
admin may hold at most `server.max_connections_per_user`, and the last
`server.reserved_connections` are kept for root and admins, so one user
holding connections can neither lock the others out nor stop root's
`shutdown`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import SocketListener, SocketStream, TaskGroup, UNIXSocketStream

from cortexd.config import ServerConfig
from cortexd.protocol import (
    JSONRPC,
    Busy,
    CortexError,
    InternalError,
    InvalidRequest,
    PermissionDenied,
    ShuttingDown,
    Timeout,
    TooLarge,
)
from cortexd.server.batch import BatchAnswers
from cortexd.server.call import Call, Peer
from cortexd.server.framing import NEWLINE, BadFrame, check_request, dumps, parse_request
from cortexd.server.lines import LineReader
from cortexd.server.registry import Method, Registry
from cortexd.server.stats import UNKNOWN_METHOD, ServerStats

log = logging.getLogger(__name__)

_ACCEPT_RETRY_DELAY = 0.1
# Connections taken from the backlog before other tasks get a turn.
_ACCEPTS_PER_YIELD = 64
_REFUSE_WRITE_TIMEOUT = 1.0
# How often a connection whose client sent EOF with requests still running
# checks whether the client hung up entirely (and so wants no answers).
_HANGUP_POLL = 0.2
_CLOSED = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
# A client pipelining many cheap requests is answered from the buffer without
# awaiting anything; yield to the loop every so many lines so it cannot
# starve other connections.
_LINES_PER_YIELD = 32
# The idle sweep runs this often relative to the idle timeout, within bounds.
_SWEEP_FRACTION = 0.25
_SWEEP_MIN, _SWEEP_MAX = 0.05, 10.0


class Authorizer:
    """Decides who may call what, from the peer's uid and groups."""

    def __init__(
        self,
        admin_gid: Callable[[], int | None],
        journal_gids: frozenset[int],
        *,
        admin_group: Callable[[], str] = lambda: "the admin group",
        journal_groups: tuple[str, ...] = ("adm", "systemd-journal"),
    ) -> None:
        self._admin_gid = admin_gid
        self._journal_gids = journal_gids
        self._admin_group = admin_group
        self._journal_groups = journal_groups
        self._own_uid = os.getuid()

    def is_admin(self, peer: Peer) -> bool:
        """uid 0, the daemon's own user, or a member of the admin group."""
        # The daemon's own user is an admin of it: a per-user `make run`
        # daemon must obey the user who started it.
        return self.is_root_or_owner(peer.uid) or peer.in_group(self._admin_gid())

    def is_root_or_owner(self, uid: int) -> bool:
        """uid 0 or the daemon's own user: an answer without reading the peer's groups."""
        return uid == 0 or uid == self._own_uid

    def check(self, method: Method, peer: Peer) -> bool:
        """Whether `peer` may call `method`."""
        if method.access == "read":
            return True
        if self.is_admin(peer):
            return True
        if method.access == "journal":
            return bool(self._journal_gids & peer.groups())
        return False

    def refusal(self, method: Method) -> str:
        """Why a caller may not call `method`, naming who may."""
        admin = self._admin_group()
        if method.access == "journal":
            groups = ", ".join([*self._journal_groups, admin])
            return (
                f"{method.name} reads the journal: it needs uid 0 or membership in one of "
                f"the groups {groups} (the last is the admin group)"
            )
        return f"{method.name} needs uid 0 or membership in the admin group ({admin})"


class Admission:
    """Who may open one more connection: per-uid counts, and room kept for admins.

    The common case costs a dict lookup: the peer's groups are read (to tell
    an admin) only when a non-root uid is at its own limit or the server is
    into the reserved connections.
    """

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer
        self._held: dict[int, int] = {}

    def held(self, uid: int) -> int:
        """How many connections `uid` holds now."""
        return self._held.get(uid, 0)

    def opened(self, uid: int) -> None:
        self._held[uid] = self._held.get(uid, 0) + 1

    def closed(self, uid: int) -> None:
        left = self._held.get(uid, 0) - 1
        if left > 0:
            self._held[uid] = left
        else:
            self._held.pop(uid, None)

    def refusal(self, peer: Peer, open_now: int, config: ServerConfig) -> Busy | None:
        """None to admit `peer`, else the BUSY error to send it."""
        total = config.max_connections
        if open_now >= total:
            return Busy(
                f"too many connections (limit {total}); try again later", limit=total, scope="all"
            )
        if self._authorizer.is_root_or_owner(peer.uid):
            return None
        per_user = per_user_limit(config)
        reserved = reserved_connections(config)
        held = self._held.get(peer.uid, 0)
        if held < per_user and open_now < total - reserved:
            return None
        if self._authorizer.is_admin(peer):
            return None
        if held >= per_user:
            return Busy(
                f"too many connections from uid {peer.uid} (limit {per_user} per user); "
                "close some or try again later",
                limit=per_user,
                scope="user",
            )
        return Busy(
            f"too many connections ({open_now} of {total}; the last {reserved} are kept for "
            "root and admins); try again later",
            limit=total - reserved,
            scope="reserved",
        )


def per_user_limit(config: ServerConfig) -> int:
    """`server.max_connections_per_user`, or with 0 a quarter of `max_connections`."""
    return config.max_connections_per_user or max(1, config.max_connections // 4)


def reserved_connections(config: ServerConfig) -> int:
    """`server.reserved_connections`, leaving at least one connection for anyone."""
    return min(config.reserved_connections, config.max_connections - 1)


class Server:
    """Serves the registry's methods on a listening Unix socket."""

    def __init__(
        self,
        config: ServerConfig,
        registry: Registry,
        stats: ServerStats,
        authorizer: Authorizer,
        *,
        peer_of: Callable[[socket.socket], Peer] = Peer.of,
    ) -> None:
        # `peer_of` reads a connection's credentials (SO_PEERCRED); tests of
        # access rules pass one that answers for another user.
        self._peer_of = peer_of
        self.config = config
        self.registry = registry
        self.stats = stats
        self.authorizer = authorizer
        self.shutting_down = False
        self._inflight = 0
        # Requests of methods that may change what `status` shows, answered
        # or started: a change here makes `status` read its summaries again.
        self.changes = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._connections: TaskGroup | None = None
        self._live: set[Connection] = set()
        self.admission = Admission(authorizer)

    @property
    def accepting(self) -> bool:
        """True once `serve` accepts connections, until the connections are closed."""
        return self._connections is not None and not self._connections.cancel_scope.cancel_called

    @property
    def inflight(self) -> int:
        """Requests running in their own task right now (inline ones never count)."""
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
        """Accept and serve connections until `close_connections`.

        `task_status.started()` is called once the listener accepts. On
        cancellation every connection is closed.
        """
        listener = await SocketListener.from_socket(sock)
        sock.setblocking(False)
        # The listener only owns the socket (closing it on the way out); the
        # accept loop works on the socket itself.
        async with listener, anyio.create_task_group() as connections:
            self._connections = connections
            connections.start_soon(self._sweep_idle)
            task_status.started()
            await self._accept_loop(sock, connections)

    def stop_accepting(self) -> None:
        """Begin draining: new requests are answered SHUTTING_DOWN.

        The listener keeps accepting until `close_connections`, so a client
        that connects during the drain is told why instead of hanging in the
        backlog; methods marked `during_shutdown` (ping, status) still answer.
        """
        self.shutting_down = True

    async def drain(self, grace: float) -> bool:
        """Wait up to `grace` seconds for in-flight requests; True if all finished."""
        with anyio.move_on_after(grace):
            await self._idle.wait()
            return True
        return self._inflight == 0

    def close_connections(self) -> None:
        """Stop accepting and cancel every connection, finishing `serve`."""
        if self._connections is not None:
            self._connections.cancel_scope.cancel()

    async def _accept_loop(self, sock: socket.socket, connections: TaskGroup) -> None:
        """Accept every connection the kernel has queued, then wait for more.

        anyio's `accept` takes one connection per turn of the event loop, so
        a burst of connections waited for hundreds of turns of a loop busy
        serving the first of them. Here each wake-up drains the backlog, in
        slices of `_ACCEPTS_PER_YIELD` so other connections still get turns.
        """
        failing = False
        accepted = 0
        while True:
            try:
                client, _ = sock.accept()
            except BlockingIOError:
                accepted = 0
                await anyio.wait_readable(sock)
                continue
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: back off instead of spinning or dying;
                # the pending client stays in the backlog until a descriptor
                # is free. Logged once per episode, not every retry.
                if not failing:
                    log.error("accept failed, retrying until descriptors free up: %s", exc)
                    failing = True
                await anyio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            if failing:
                log.info("accepting connections again")
                failing = False
            client.setblocking(False)
            self._admit(client, connections)
            accepted += 1
            if accepted >= _ACCEPTS_PER_YIELD:
                accepted = 0
                await anyio.lowlevel.checkpoint()

    def _admit(self, client: socket.socket, connections: TaskGroup) -> None:
        stats = self.stats
        try:
            peer = self._peer_of(client)
        except OSError:  # the client is gone already
            client.close()
            return
        refusal = self.admission.refusal(peer, stats.connections_open, self.config)
        if refusal is not None:
            stats.connections_refused += 1
            connections.start_soon(self._refuse, client, refusal)
            return
        # Counted here, not in the handler, so a burst of accepts before
        # the handlers first run cannot overshoot the limit.
        stats.connections_open += 1
        stats.connections_total += 1
        self.admission.opened(peer.uid)
        connections.start_soon(self._handle_connection, client, peer)

    async def _sweep_idle(self) -> None:
        """Close connections with nothing in flight and no traffic for `idle_timeout`.

        One sweeper for all connections instead of a timeout around every
        read: a cancel scope per request line was a fifth of the cost of a
        `ping`.
        """
        while True:
            idle = self.config.idle_timeout
            await anyio.sleep(min(max(idle * _SWEEP_FRACTION, _SWEEP_MIN), _SWEEP_MAX))
            cutoff = time.monotonic() - idle
            for conn in [c for c in self._live if c.idle_since(cutoff)]:
                log.debug("closing idle connection", extra={"PEER_PID": conn.peer.pid})
                conn.close_idle()

    async def _refuse(self, client: socket.socket, error: Busy) -> None:
        try:
            stream = await UNIXSocketStream.from_socket(client)
        except ValueError:  # not connected any more: the client is gone
            client.close()
            return
        with anyio.move_on_after(_REFUSE_WRITE_TIMEOUT), contextlib.suppress(*_CLOSED):
            await stream.send(dumps({"jsonrpc": JSONRPC, "id": None, "error": error.to_error()}))
        await anyio.aclose_forcefully(stream)

    async def _handle_connection(self, client: socket.socket, peer: Peer) -> None:
        stream: SocketStream | None = None
        try:
            try:
                stream = await UNIXSocketStream.from_socket(client)
            except ValueError:  # not connected any more: the client is gone
                return
            conn = Connection(self, stream, client, peer)
            self._live.add(conn)
            try:
                await conn.run()
            finally:
                self._live.discard(conn)
        except Exception:  # isolation boundary: one connection's bug is logged, not fatal
            log.exception("connection handler failed")
        finally:
            self.stats.connections_open -= 1
            self.admission.closed(peer.uid)
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            else:
                client.close()

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

    def __init__(
        self, server: Server, stream: SocketStream, raw: socket.socket, peer: Peer
    ) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        self._raw = raw
        self._reader = LineReader(raw)
        # fast_acquire: an uncontended lock is taken without a trip through
        # the event loop; frames still never interleave.
        self._write_lock = anyio.Lock(fast_acquire=True)
        self.last_active = time.monotonic()
        self._slots = anyio.Semaphore(server.config.max_inflight_per_connection)
        self._pending = 0
        self._tasks: TaskGroup | None = None
        self._admin: bool | None = None

    async def run(self) -> None:
        """Read and answer until EOF, an idle timeout, a broken peer or cancellation."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                eof = await self._read_loop(tasks)
            finally:
                # Before the socket closes: the selector must not keep a closed
                # descriptor that a new connection may reuse.
                self._reader.close()
            if eof and self._pending:
                tasks.start_soon(self._watch_hangup)
        # The task group waited for every request started on this connection,
        # so a client that half-closes after its last request still gets answers.

    def idle_since(self, cutoff: float) -> bool:
        """True when nothing is in flight and the last traffic was before `cutoff`."""
        return self._pending == 0 and self.last_active < cutoff

    def close_idle(self) -> None:
        self._abort()

    async def _read_loop(self, tasks: TaskGroup) -> bool:
        """Dispatch each line; returns True when the client sent EOF.

        Idle connections are closed by the server's sweeper, which cancels
        this loop; see `Server._sweep_idle`.
        """
        since_yield = 0
        while True:
            cfg = self.server.config
            line: bytes
            eof = False
            try:
                # One byte over the limit tells an over-long line from one
                # of exactly max_request_bytes whose newline comes later.
                line = await self._reader.receive_until(NEWLINE, cfg.max_request_bytes + 1)
            except anyio.DelimiterNotFound:
                await self._too_large(cfg.max_request_bytes)
                return False
            except anyio.IncompleteRead:
                # The final request may lack its newline (`echo -n … | socat`).
                eof = True
                line = bytes(self._reader.buffer)
            except _CLOSED:
                self._abort()
                return False
            if len(line) > cfg.max_request_bytes:
                await self._too_large(cfg.max_request_bytes)
                return False
            self.last_active = time.monotonic()
            await self._on_line(line, tasks)
            if eof:
                return True
            since_yield += 1
            if since_yield >= _LINES_PER_YIELD:
                since_yield = 0
                await anyio.lowlevel.checkpoint()

    async def _too_large(self, limit: int) -> None:
        # The client broke framing, so nothing more it sent can be trusted:
        # answer, then close without waiting for its other requests.
        await self._send_error(None, TooLarge(limit), UNKNOWN_METHOD)
        self._abort()

    async def _on_line(self, line: bytes, tasks: TaskGroup) -> None:
        if not line.strip():
            return
        started = time.perf_counter()
        try:
            request = parse_request(line)
        except BadFrame as bad:
            await self._send_error(bad.req_id, bad.error, UNKNOWN_METHOD, started)
            return
        if isinstance(request, list):
            await self._on_batch(request, tasks, started)
            return
        await self._dispatch(request, tasks, started)

    async def _on_batch(self, members: list[Any], tasks: TaskGroup, started: float) -> None:
        """Dispatch each member of a batch; `BatchAnswers` sends the answers as one array."""
        limit = self.server.config.max_batch_members
        if len(members) > limit:
            error = InvalidRequest(
                f"a batch of {len(members)} requests is over the limit of {limit}; "
                "split it into smaller batches",
                limit=limit,
                members=len(members),
            )
            await self._send_error(None, error, UNKNOWN_METHOD, started)
            return
        batch = BatchAnswers(len(members), self._write)
        for index, member in enumerate(members):
            try:
                request = check_request(member)
            except BadFrame as bad:
                # Answers to a batch come in any order, often under `"id": null`:
                # the position tells the client which member was wrong.
                error = InvalidRequest(f"batch member {index}: {bad.error.message}", member=index)
                await self._send_error(bad.req_id, error, UNKNOWN_METHOD, started, batch=batch)
            else:
                await self._dispatch(request, tasks, started, batch)
            # Inline members are answered without awaiting anything: a long
            # batch of them must not starve the other connections.
            if index % _LINES_PER_YIELD == _LINES_PER_YIELD - 1:
                await anyio.lowlevel.checkpoint()

    async def _dispatch(
        self,
        request: dict[str, Any],
        tasks: TaskGroup,
        started: float,
        batch: BatchAnswers | None = None,
    ) -> None:
        req_id = request.get("id")
        notify = "id" not in request
        name = request["method"]
        server = self.server
        label = UNKNOWN_METHOD
        try:
            method = server.registry.get(name)
            label = method.name
            if server.shutting_down and not method.during_shutdown:
                raise ShuttingDown()
            if not server.authorizer.check(method, self.peer):
                self._deny(method)
            params = method.bind(request.get("params"))
        except CortexError as exc:
            await self._send_error(req_id, exc, label, started, notify=notify, batch=batch)
            return
        call = Call(
            method=method.name,
            params=params,
            peer=self.peer,
            id=req_id,
            is_admin=self._is_admin(),
            # A notification gets nothing back, not even its stream messages.
            _sender=None if notify else self._send_stream,
        )
        if method.inline:
            if method.changes_state:
                server.changes += 1
            await self._answer(method, call, notify, started, batch, inline=True)
            return
        await self._slots.acquire()
        self._pending += 1
        server._begin()
        tasks.start_soon(self._run, method, call, notify, started, batch)

    def _deny(self, method: Method) -> None:
        peer = self.peer
        log.warning(
            "denied %s to uid %d pid %d",
            method.name,
            peer.uid,
            peer.pid,
            extra={"PEER_UID": peer.uid, "PEER_PID": peer.pid, "METHOD": method.name},
        )
        raise PermissionDenied(
            self.server.authorizer.refusal(method), method=method.name, uid=peer.uid
        )

    async def _run(
        self, method: Method, call: Call, notify: bool, started: float, batch: BatchAnswers | None
    ) -> None:
        try:
            await self._answer(method, call, notify, started, batch, inline=False)
        finally:
            if method.changes_state:
                self.server.changes += 1
            self._pending -= 1
            self.server._end()
            self._slots.release()

    async def _answer(
        self,
        method: Method,
        call: Call,
        notify: bool,
        started: float,
        batch: BatchAnswers | None,
        *,
        inline: bool,
    ) -> None:
        deadline = method.timeout or self.server.config.request_timeout
        try:
            if inline:
                result = method.handler(call)
            else:
                with anyio.fail_after(deadline):
                    result = await method.handler(call)
        except TimeoutError:
            await self._send_error(
                call.id, Timeout(deadline), method.name, started, notify=notify, batch=batch
            )
        except CortexError as exc:
            await self._send_error(call.id, exc, method.name, started, notify=notify, batch=batch)
        except Exception:  # isolation boundary: a handler bug answers INTERNAL_ERROR
            rid = call.request_id
            log.exception(
                "%s failed", method.name, extra={"REQUEST_ID": rid, "METHOD": method.name}
            )
            error = InternalError(
                f"internal error in {method.name} (request_id {rid})", request_id=rid
            )
            await self._send_error(call.id, error, method.name, started, notify=notify, batch=batch)
        else:
            self.server.stats.record(method.name, None, time.perf_counter() - started)
            if batch is not None:
                await batch.done(
                    None if notify else {"jsonrpc": JSONRPC, "id": call.id, "result": result}
                )
            elif not notify:
                await self._write(dumps({"jsonrpc": JSONRPC, "id": call.id, "result": result}))

    def _is_admin(self) -> bool:
        if self._admin is None:
            self._admin = self.server.authorizer.is_admin(self.peer)
        return self._admin

    async def _send_stream(self, params: dict[str, Any]) -> None:
        await self._write(dumps({"jsonrpc": JSONRPC, "method": "stream", "params": params}))

    async def _send_error(
        self,
        req_id: Any,
        exc: CortexError,
        label: str,
        started: float | None = None,
        *,
        notify: bool = False,
        batch: BatchAnswers | None = None,
    ) -> None:
        elapsed = time.perf_counter() - started if started is not None else 0.0
        self.server.stats.record(label, exc.code.name, elapsed)
        if batch is not None:
            await batch.done(
                None if notify else {"jsonrpc": JSONRPC, "id": req_id, "error": exc.to_error()}
            )
        elif not notify:
            await self._write(dumps({"jsonrpc": JSONRPC, "id": req_id, "error": exc.to_error()}))

    async def _write(self, data: bytes) -> None:
        """Send one frame; a client that stops reading past the write deadline is cut off."""
        if not self._write_lock.locked():
            # Nobody is part-way through a frame: hand it to the kernel without
            # taking the lock. Nothing between the check and the send yields,
            # so frames cannot interleave; most answers fit the socket buffer
            # and end here. Even a fast-acquire lock costs a cancellation
            # check per answer, a tenth of a `ping`.
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._abort()
                return
            self.last_active = time.monotonic()
            if sent == len(data):
                return
            data = data[sent:]
            if sent:
                # The rest of a frame already begun must follow before any other.
                await self._send_locked(data, started=True)
                return
        await self._send_locked(data, started=False)

    async def _send_locked(self, data: bytes, *, started: bool) -> None:
        """Send `data` under the write lock, waiting at most `write_timeout` for the client."""
        try:
            async with self._write_lock:
                # A frame whose start is already out waits for no deadline to
                # be checked first; a new one still tries the direct send:
                # anyio's send would yield to the loop first even when the
                # socket is writable.
                sent = 0
                if not started:
                    try:
                        sent = self._raw.send(data)
                    except BlockingIOError:
                        sent = 0
                if sent < len(data):
                    with anyio.fail_after(self.server.config.write_timeout):
                        await self.stream.send(data[sent:])
                self.last_active = time.monotonic()
        except TimeoutError:
            log.warning(
                "client pid %d stopped reading; closing its connection",
                self.peer.pid,
                extra={"PEER_UID": self.peer.uid, "PEER_PID": self.peer.pid},
            )
            self._abort()
        except _CLOSED:
            self._abort()

    async def _watch_hangup(self) -> None:
        """After EOF, cancel the running requests if the client hung up entirely.

        EOF alone may be a half-close (`socat`, `shutdown(SHUT_WR)`) from a
        client still waiting for its answers, so the reader cannot tell; the
        kernel reports POLLHUP only once the peer closed both directions.
        """
        poller = select.poll()
        poller.register(self._raw.fileno(), select.POLLHUP)
        while self._pending:
            if any(ev & select.POLLHUP for _, ev in poller.poll(0)):
                log.debug("client pid %d hung up; cancelling its requests", self.peer.pid)
                self._abort()
                return
            await anyio.sleep(_HANGUP_POLL)

    def _abort(self) -> None:
        """The peer is gone or broke the protocol: cancel everything this connection started."""
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
