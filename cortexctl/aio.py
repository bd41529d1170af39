"""Asyncio client for the cortexd socket: concurrent calls on one connection.

A reader task routes each answer to the call that sent its `id`, so many
calls can be outstanding at once; stream notifications go to the callback the
call registered.

A cancelled call cancels its request on the daemon: an inference request by
its `request_id` (`inference.cancel`, sent on the same connection), any other
request by closing the connection when it was the only one outstanding (the
daemon cancels what a vanished client started; the next call reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from types import TracebackType
from typing import Any

from cortexctl.client import (
    DEFAULT_TIMEOUT,
    LOG_HINT,
    MAX_LINE,
    DaemonUnreachable,
    UntrustedSocket,
    check_directory,
    check_peer,
    encode,
    expected_owners,
    unreachable,
)
from cortexd.protocol import JSONRPC, CortexError, client_socket_path, error_from_wire

# Methods whose requests `inference.cancel` can end. The client asks them for
# their stream so that it learns the `request_id` a cancellation must name
# (stream frames the caller did not ask for are dropped).
CANCELLABLE_BY_ID = frozenset({"inference.generate", "inference.chat", "inference.explain"})


class AsyncClient:
    """`async with AsyncClient() as c: await c.call("status")`."""

    def __init__(self, path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path or client_socket_path()
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._streams: dict[int, Callable[[Any], None]] = {}
        self._request_ids: dict[int, str] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed_error: Exception | None = None

    async def connect(self) -> None:
        """Connect, after the same checks as `Client.connect` (directory, then peer)."""
        owners, who = expected_owners(self.path)
        check_directory(self.path, owners, who)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path, limit=MAX_LINE), self.timeout
            )
        except OSError as exc:
            raise unreachable(self.path, exc) from None
        try:
            check_peer(writer.get_extra_info("socket"), self.path, owners, who)
        except UntrustedSocket:
            writer.close()
            raise
        self._reader, self._writer = reader, writer
        self._closed_error = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with DaemonUnreachable."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        closed = DaemonUnreachable(self.path, "the client was closed", "open a new client")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(closed)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None

    async def __aenter__(self) -> AsyncClient:
        if self._writer is None:
            await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_stream: Callable[[Any], None] | None = None,
        reply_timeout: float | None = None,
    ) -> Any:
        """Send one request and await its answer.

        Raises:
            CortexError: (a subclass) the daemon answered with an error.
            DaemonUnreachable: the connection is gone.
            TimeoutError: no answer within `reply_timeout` (default: the client's); the request is
                forgotten locally (the daemon may still finish it).

        On cancellation the request is cancelled on the daemon too (see the
        module docstring); when neither way applies (a non-inference request
        while others share the connection) its answer is only discarded.
        """
        if self._writer is None:
            await self.connect()
        assert self._writer is not None
        if self._task is None or self._task.done():
            raise self._closed_error or DaemonUnreachable(
                self.path, "the connection is closed", "open a new client"
            )
        req_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": JSONRPC, "id": req_id, "method": method}
        if method in CANCELLABLE_BY_ID and not (params or {}).get("stream"):
            params = {**(params or {}), "stream": True}
        if params:
            message["params"] = params
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        if on_stream is not None:
            self._streams[req_id] = on_stream
        try:
            # One deadline covers sending too: a daemon that stops reading
            # must not hang the caller in drain().
            async with asyncio.timeout(self.timeout if reply_timeout is None else reply_timeout):
                self._writer.write(encode(message))
                await self._writer.drain()
                reply = await future
        except TimeoutError:  # an OSError too, but it means "no answer yet", not "gone"
            raise
        except OSError as exc:
            raise DaemonUnreachable(self.path, str(exc), "check that cortexd is running") from None
        except asyncio.CancelledError:
            self._cancel_on_daemon(req_id)
            raise
        finally:
            self._pending.pop(req_id, None)
            self._streams.pop(req_id, None)
            self._request_ids.pop(req_id, None)
        if "error" in reply:
            raise error_from_wire(reply["error"])
        return reply.get("result")

    def _cancel_on_daemon(self, req_id: int) -> None:
        """Make the daemon stop request `req_id`; never waits (we are being cancelled)."""
        request_id = self._request_ids.get(req_id)
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if request_id is not None:
            # Fire and forget: the answer finds no pending call and is dropped.
            cancel = {
                "jsonrpc": JSONRPC,
                "id": next(self._ids),
                "method": "inference.cancel",
                "params": {"request_id": request_id},
            }
            writer.write(encode(cancel))
        elif all(other == req_id for other in self._pending):
            writer.close()
            self._writer = None
            if self._task is not None:
                self._task.cancel()
                self._task = None

    async def _read_loop(self) -> None:
        assert self._reader is not None
        error: Exception = DaemonUnreachable(
            self.path, "the daemon closed the connection", "check the daemon's log: " + LOG_HINT
        )
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    parting = self._route(message)
                    if parting is not None:
                        error = parting
        except (OSError, ValueError) as exc:
            # A reset right after a parting error line (BUSY) is expected;
            # the parting error says more than the reset.
            if not isinstance(error, CortexError):
                error = DaemonUnreachable(
                    self.path, str(exc), "check the daemon's log: " + LOG_HINT
                )
        self._closed_error = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _route(self, message: dict[str, Any]) -> Exception | None:
        """Deliver one frame; returns the error of an id-less error frame.

        The daemon answers with `id: null` only when it could not tell which
        request a frame was (BUSY on connect, TOO_LARGE): every call still
        waiting fails with that error once the connection closes.
        """
        if message.get("method") == "stream":
            params = message.get("params")
            if isinstance(params, dict):
                stream_id = params.get("id")
                if not isinstance(stream_id, int):
                    return None
                data = params.get("data")
                request_id = data.get("request_id") if isinstance(data, dict) else None
                if isinstance(request_id, str) and stream_id in self._pending:
                    self._request_ids[stream_id] = request_id
                callback = self._streams.get(stream_id)
                if callback is not None:
                    callback(data)
            return None
        req_id = message.get("id")
        if req_id is None and isinstance(message.get("error"), dict):
            return error_from_wire(message["error"])
        future = self._pending.get(req_id) if isinstance(req_id, int) else None
        if future is not None and not future.done():
            future.set_result(message)
        return None
