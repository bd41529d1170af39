"""Blocking client for the cortexd socket: one persistent connection.

Errors the daemon answers with are raised as the typed exceptions of
`cortexd.protocol` (`QueueFull`, `PermissionDenied`, …); failing to reach the
daemon at all is `DaemonUnreachable`. Only the standard library is
imported, so command-line use stays fast.
"""

from __future__ import annotations

import errno
import grp
import itertools
import json
import os
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any

from cortexd.protocol import JSONRPC, InvalidRequest, client_socket_path, error_from_wire

DEFAULT_TIMEOUT = 10.0
MAX_LINE = 64 * 1024 * 1024
DEFAULT_SOCKET_GROUP = "cortex"
# How long to look for the daemon's parting error line after a failed send.
PARTING_READ_TIMEOUT = 0.5
LOG_HINT = "journalctl -u cortexd (or the terminal running `make run`)"
StreamHandler = Callable[[Any], None]


def encode(message: dict[str, Any]) -> bytes:
    """One request frame. The standard json module keeps the CLI's start-up
    short: orjson's import alone costs more than a whole `status` round trip."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class DaemonUnreachable(Exception):
    """The socket could not be opened, or the connection broke mid-call."""

    def __init__(self, path: str, reason: str, hint: str) -> None:
        super().__init__(f"cannot reach cortexd at {path}: {reason}")
        self.path = path
        self.reason = reason
        self.hint = hint


def _socket_group(path: str) -> str:
    """The group owning the socket file (what the user must join), else `cortex`."""
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return DEFAULT_SOCKET_GROUP


def unreachable(path: str, exc: OSError) -> DaemonUnreachable:
    """Translate a connect error into a message with what to do about it."""
    if isinstance(exc, PermissionError) or exc.errno == errno.EACCES:
        group = _socket_group(path)
        return DaemonUnreachable(
            path,
            "permission denied",
            f"join the socket's group: sudo usermod -aG {group} $USER, then log in again",
        )
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return DaemonUnreachable(
            path,
            "the daemon is not running",
            "start it with `make run` (per user) or `sudo systemctl start cortexd`",
        )
    return DaemonUnreachable(path, exc.strerror or str(exc), "check that cortexd is running")


class Client:
    """A blocking JSON-RPC client; use as a context manager.

    Calls are sequential on the one connection. `call(..., on_stream=fn)`
    passes each `stream` notification's `data` to `fn` before returning the
    final result.
    """

    def __init__(self, path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path or client_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._ids = itertools.count(1)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise unreachable(self.path, exc) from None
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_stream: StreamHandler | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and wait for its answer.

        Raises:
            CortexError: (a subclass) the daemon answered with an error.
            DaemonUnreachable: the connection failed or closed.
            TimeoutError: no answer within `timeout` seconds of silence.
        """
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        req_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": JSONRPC, "id": req_id, "method": method}
        if params:
            message["params"] = params
        self._sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            try:
                self._sock.sendall(encode(message))
            except OSError:
                # A daemon that refuses the connection (BUSY) or is stopping
                # says why in a line it sent before closing: read it first.
                self._raise_parting_error()
                raise
            while True:
                reply = self._read_message()
                if reply.get("method") == "stream":
                    stream = reply.get("params") or {}
                    if stream.get("id") == req_id and on_stream is not None:
                        on_stream(stream.get("data"))
                    continue
                if reply.get("id") not in (req_id, None):
                    continue
                if "error" in reply:
                    raise error_from_wire(reply["error"])
                return reply.get("result")
        except TimeoutError:
            raise
        except OSError as exc:
            self.close()
            raise DaemonUnreachable(
                self.path, f"connection failed: {exc}", "check the daemon's log: " + LOG_HINT
            ) from None

    def _raise_parting_error(self) -> None:
        """Raise the error frame the daemon left in our buffer, if any."""
        assert self._sock is not None
        try:
            self._sock.settimeout(PARTING_READ_TIMEOUT)
            reply = self._read_message()
        except (OSError, DaemonUnreachable, InvalidRequest):
            return
        if isinstance(reply.get("error"), dict):
            self.close()
            raise error_from_wire(reply["error"])

    def _read_message(self) -> dict[str, Any]:
        assert self._sock is not None
        while True:
            index = self._buffer.find(b"\n")
            if index >= 0:
                line = bytes(self._buffer[:index])
                del self._buffer[: index + 1]
                try:
                    value = json.loads(line)
                except ValueError:
                    raise InvalidRequest("the daemon sent a frame that is not JSON") from None
                if not isinstance(value, dict):
                    raise InvalidRequest("the daemon sent a frame that is not an object")
                return value
            if len(self._buffer) > MAX_LINE:
                raise InvalidRequest("the daemon sent an oversized frame")
            chunk = self._sock.recv(65536)
            if not chunk:
                self.close()
                raise DaemonUnreachable(
                    self.path, "the daemon closed the connection", "check its log: " + LOG_HINT
                )
            self._buffer += chunk
