"""The socket protocol: framing constants, error codes, error types, socket path.

This module is shared by the daemon and by `cortexctl`, so it imports only the
standard library. Errors are raised by name in the core (`QueueFull(depth=3)`)
and turned into JSON-RPC error objects only at the server edge; the client
turns them back into the same classes.
"""

from __future__ import annotations

import os
from enum import IntEnum

# `typing` costs every cortexctl call a tenth of its start-up, and with PEP 563
# annotations only the type checker reads these names.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

JSONRPC = "2.0"
DEFAULT_SYSTEM_SOCKET = "/run/cortex.sock"
SOCKET_ENV = "CORTEX_SOCKET"


class ErrorCode(IntEnum):
    """Every error code the daemon answers with; `name` is the stable symbol."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    NOT_FOUND = -32001
    PERMISSION_DENIED = -32002
    QUEUE_FULL = -32003
    MODEL_NOT_LOADED = -32004
    TIMEOUT = -32005
    TOO_LARGE = -32006
    SHUTTING_DOWN = -32007
    BUSY = -32008
    UNAVAILABLE = -32009
    CANCELLED = -32010
    CONFIG_ERROR = -32011


class CortexError(Exception):
    """Root of every error that crosses the protocol.

    Subclasses name a condition and carry its code. `data` is merged into the
    error object's `data` next to `name`.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        """Return the JSON-RPC `error` object for this exception."""
        return {
            "code": int(self.code),
            "message": self.message,
            "data": {"name": self.code.name, **self.data},
        }


class ParseError(CortexError):
    code = ErrorCode.PARSE_ERROR


class InvalidRequest(CortexError):
    code = ErrorCode.INVALID_REQUEST


class MethodNotFound(CortexError):
    code = ErrorCode.METHOD_NOT_FOUND

    def __init__(self, method: str) -> None:
        super().__init__(f"unknown method {method!r}", method=method)


class InvalidParams(CortexError):
    code = ErrorCode.INVALID_PARAMS

    def __init__(self, param: str, problem: str, **data: Any) -> None:
        super().__init__(f"param {param!r}: {problem}", param=param, **data)


class InternalError(CortexError):
    code = ErrorCode.INTERNAL_ERROR


class NotFound(CortexError):
    code = ErrorCode.NOT_FOUND


class PermissionDenied(CortexError):
    code = ErrorCode.PERMISSION_DENIED


class QueueFull(CortexError):
    code = ErrorCode.QUEUE_FULL

    def __init__(self, depth: int) -> None:
        super().__init__(f"queue is full ({depth} waiting)", depth=depth)


class ModelNotLoaded(CortexError):
    code = ErrorCode.MODEL_NOT_LOADED

    def __init__(self, state: str, reason: str | None = None) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"model is {state}{detail}", state=state, reason=reason)


class Timeout(CortexError):
    code = ErrorCode.TIMEOUT

    def __init__(self, seconds: float) -> None:
        super().__init__(f"request ran past its {seconds:g}s deadline", seconds=seconds)


class TooLarge(CortexError):
    code = ErrorCode.TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(f"request line exceeds {limit} bytes", limit=limit)


class ShuttingDown(CortexError):
    code = ErrorCode.SHUTTING_DOWN

    def __init__(self) -> None:
        super().__init__("the daemon is shutting down")


class Busy(CortexError):
    code = ErrorCode.BUSY


class Unavailable(CortexError):
    code = ErrorCode.UNAVAILABLE


class Cancelled(CortexError):
    code = ErrorCode.CANCELLED


class ConfigError(CortexError):
    """Configuration failed validation; `errors` lists one message per problem."""

    code = ErrorCode.CONFIG_ERROR

    def __init__(self, errors: list[str]) -> None:
        summary = errors[0] if len(errors) == 1 else f"{len(errors)} problems: " + "; ".join(errors)
        super().__init__(f"invalid configuration: {summary}", errors=errors)
        self.errors = errors


ERROR_CLASSES: dict[int, type[CortexError]] = {
    int(cls.code): cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        NotFound,
        PermissionDenied,
        QueueFull,
        ModelNotLoaded,
        Timeout,
        TooLarge,
        ShuttingDown,
        Busy,
        Unavailable,
        Cancelled,
        ConfigError,
    )
}


def error_from_wire(error: dict[str, Any]) -> CortexError:
    """Rebuild the typed exception for an `error` object received from the daemon."""
    code = int(error.get("code", ErrorCode.INTERNAL_ERROR))
    cls = ERROR_CLASSES.get(code, CortexError)
    exc = CortexError.__new__(cls)
    data = dict(error.get("data") or {})
    data.pop("name", None)
    Exception.__init__(exc, str(error.get("message", "")))
    exc.message = str(error.get("message", ""))
    exc.data = data
    if isinstance(exc, ConfigError):
        exc.errors = list(data.get("errors", []))
    return exc


def client_socket_path() -> str:
    """The socket a client dials when none is given: the daemon's default, except
    that a user whose own daemon is not running reaches the system daemon.

    So on an installed host a member of `cortex` runs `cortexctl status` with no
    flags, while `make run` as that user still gets its own daemon.
    """
    path = default_socket_path()
    if os.environ.get(SOCKET_ENV) or os.getuid() == 0:
        return path
    if not os.path.exists(path) and os.path.exists(DEFAULT_SYSTEM_SOCKET):
        return DEFAULT_SYSTEM_SOCKET
    return path


def user_runtime_dir(uid: int | None = None) -> str:
    """Where a non-root daemon keeps its socket: $XDG_RUNTIME_DIR or a private /tmp dir."""
    uid = os.getuid() if uid is None else uid
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return xdg
    return f"/tmp/cortex-{uid}"


def default_socket_path() -> str:
    """The socket path the daemon binds and the client dials when none is given.

    `CORTEX_SOCKET` overrides; root uses the system path; other users get a
    per-user path so `make run` and `cortexctl` agree without flags.
    """
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return explicit
    if os.getuid() == 0:
        return DEFAULT_SYSTEM_SOCKET
    return os.path.join(user_runtime_dir(), "cortex.sock")
