"""Blocking client for the cortexd socket: one persistent connection.

Errors the daemon answers with are raised as the typed exceptions of
`cortexd.protocol` (`QueueFull`, `PermissionDenied`, …); failing to reach the
daemon at all is `DaemonUnreachable`. A call that is interrupted (Ctrl-C) or
whose stream callback raises closes the connection, which makes the daemon
cancel the request; the next call reconnects. Only the standard library is
imported, so command-line use stays fast.

Before a byte is sent, the client checks whom it talks to (`check_directory`,
`check_peer`): the socket's directory must belong to the expected user and
not be writable by others, and the process answering must run as that user
(SO_PEERCRED) — root for the system socket, the caller for a per-user one.
Otherwise another local user could stand in for the daemon (a directory made
in /tmp before ours) and receive what the caller sends. A mismatch is
`UntrustedSocket`, which `cortexctl` reports with exit code 3.
"""

from __future__ import annotations

# The C socket type that `socket.socket` extends: the `socket` module builds
# four IntEnums and imports selectors when loaded, a tenth of a CLI call, and
# this client needs none of what it adds.
import _socket
import errno
import itertools
import json
import os
import stat
import sys

from cortexd.protocol import (
    DEFAULT_SYSTEM_SOCKET,
    JSONRPC,
    CortexError,
    InvalidRequest,
    client_socket_path,
    error_from_wire,
    user_runtime_dir,
)

# `typing` alone is a tenth of a `cortexctl status` run; the annotations are
# strings (PEP 563), so only the type checker needs these names.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any

    StreamHandler = Callable[[Any], None]

DEFAULT_TIMEOUT = 10.0
MAX_LINE = 64 * 1024 * 1024
DEFAULT_SOCKET_GROUP = "cortex"
# How long to look for the daemon's parting error line after a failed send.
PARTING_READ_TIMEOUT = 0.5
LOG_HINT = "journalctl -u cortexd (or the terminal running `make run`)"


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


class UntrustedSocket(DaemonUnreachable):
    """The socket's directory, or the process answering on it, is not the expected user's."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            path,
            f"refused: {reason}; nothing was sent",
            "another local user may be standing in for the daemon: check who owns the "
            "socket's directory and the process listening on it (`ss -xlp`), or name the "
            "right socket with --socket",
        )


def expected_owners(path: str) -> tuple[frozenset[int], str]:
    """The uids that may own the socket's directory and serve on it, and their description.

    The system socket is root's; a per-user socket (the caller's default) is the
    caller's own; any other path named by --socket or CORTEX_SOCKET may be either.
    """
    uid = os.getuid()
    if path == DEFAULT_SYSTEM_SOCKET:
        return frozenset({0}), "root"
    if uid != 0 and path == os.path.join(user_runtime_dir(uid), "cortex.sock"):
        return frozenset({uid}), f"you (uid {uid})"
    return frozenset({0, uid}), f"root or you (uid {uid})" if uid else "root"


def check_directory(path: str, owners: frozenset[int], who: str) -> None:
    """Refuse a socket whose directory another user owns or may write to.

    A directory that does not exist is left to `connect` to report. In a
    sticky directory writable by all (/tmp) the socket file's own owner
    decides, since nobody else can replace it there.

    Raises:
        UntrustedSocket: naming the directory and its owner or mode.
    """
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except OSError:
        return
    if st.st_uid not in owners:
        raise UntrustedSocket(path, f"its directory {parent} belongs to uid {st.st_uid}, not {who}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if not st.st_mode & stat.S_ISVTX:
            raise UntrustedSocket(
                path,
                f"its directory {parent} is writable by others "
                f"(mode {stat.S_IMODE(st.st_mode):04o})",
            )
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            return
        if owner not in owners:
            raise UntrustedSocket(path, f"the socket belongs to uid {owner}, not {who}")


def check_peer(sock: _socket.socket, path: str, owners: frozenset[int], who: str) -> None:
    """Refuse a connection whose server process does not run as an expected uid.

    Raises:
        UntrustedSocket: naming the uid that answered.
    """
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    uid = int.from_bytes(raw[4:8], sys.byteorder)  # struct ucred: pid, uid, gid
    if uid not in owners:
        raise UntrustedSocket(path, f"the process answering on it runs as uid {uid}, not {who}")


def _socket_group(path: str) -> str:
    """The group owning the socket file (what the user must join), else `cortex`."""
    import grp

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
        self._sock: _socket.socket | None = None
        self._buffer = bytearray()
        self._ids = itertools.count(1)

    def connect(self) -> None:
        """Connect, after checking the socket's directory and then the peer.

        Raises:
            UntrustedSocket: the directory or the peer is not the expected user's.
            DaemonUnreachable: the connection failed.
        """
        owners, who = expected_owners(self.path)
        check_directory(self.path, owners, who)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            check_peer(sock, self.path, owners, who)
        except UntrustedSocket:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise unreachable(self.path, exc) from None
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer.clear()

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
            TimeoutError: no answer within `timeout` seconds of silence (the
                daemon may still finish the request).

        Interrupted (KeyboardInterrupt), or when `on_stream` raises, the
        connection is closed before the exception propagates: the daemon
        cancels what a vanished client started, so the request does not run
        on. The next call opens a new connection.
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
        except (TimeoutError, CortexError, DaemonUnreachable):
            raise
        except OSError as exc:
            self.close()
            raise DaemonUnreachable(
                self.path, f"connection failed: {exc}", "check the daemon's log: " + LOG_HINT
            ) from None
        except BaseException:
            self.close()
            raise

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
