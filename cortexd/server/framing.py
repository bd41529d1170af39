"""Turning one newline-delimited frame into a checked JSON-RPC request.

Kept apart from the connection logic so the rules for what counts as a
request (docs/protocol.md) sit in one small place with no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from cortexd.protocol import JSONRPC, CortexError, InvalidRequest, ParseError

NEWLINE = b"\n"


class BadFrame(Exception):
    """A frame that is not a valid request, with the id to answer under.

    `req_id` is the request's own id when the frame was an object carrying a
    valid one (JSON-RPC lets the server echo it), otherwise None.
    """

    def __init__(self, error: CortexError, req_id: Any = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.req_id = req_id


def dumps(message: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    """Encode one outgoing frame (a message, or a batch's answers), newline included."""
    return orjson.dumps(message) + NEWLINE


def valid_id(value: Any) -> bool:
    """JSON-RPC ids are strings, numbers or null; booleans are not numbers here."""
    return value is None or (not isinstance(value, bool) and isinstance(value, str | int | float))


def parse_request(line: bytes) -> dict[str, Any] | list[Any]:
    """Decode one frame into a request object, or the members of a batch.

    A batch comes back as its raw, non-empty list of members: each is
    checked on its own with `check_request`, since one bad member gets its
    own error and the others still run (JSON-RPC 2.0 §6).

    Raises:
        BadFrame: carrying ParseError (not UTF-8, not JSON, nested too deep)
            or InvalidRequest (JSON that is neither a request object nor a
            non-empty array).
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFrame(ParseError(f"request is not valid UTF-8 (byte {exc.start})")) from None
    try:
        # orjson refuses documents nested deeper than 1024 levels with the same
        # JSONDecodeError, which is what makes "nested too deep" a parse error.
        request = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadFrame(
            ParseError(f"request is not valid JSON: {exc.msg} at position {exc.pos}")
        ) from None
    if type(request) is list:
        if not request:
            raise BadFrame(InvalidRequest("an empty batch: send at least one request"))
        return request
    return check_request(request)


def check_request(request: Any) -> dict[str, Any]:
    """Check one decoded request object (a whole frame, or a member of a batch).

    Raises:
        BadFrame: carrying InvalidRequest, with the request's id when it had
            a valid one.
    """
    if not isinstance(request, dict):
        raise BadFrame(InvalidRequest("a request must be a JSON object"))
    req_id = request.get("id")
    if not valid_id(req_id):
        raise BadFrame(InvalidRequest('"id" must be a string, a number or null'))
    if request.get("jsonrpc") != JSONRPC:
        raise BadFrame(InvalidRequest('"jsonrpc" must be "2.0"'), req_id)
    method = request.get("method")
    if not isinstance(method, str) or not method:
        raise BadFrame(InvalidRequest('"method" must be a non-empty string'), req_id)
    params = request.get("params")
    if params is not None and not isinstance(params, dict | list):
        raise BadFrame(InvalidRequest('"params" must be an object or an array'), req_id)
    return request
