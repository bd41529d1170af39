"""Turning one newline-delimited frame into a checked JSON-RPC request.

Kept apart from the connection logic so the rules for what counts as a
request (SPEC §3) sit in one small place with no I/O.
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


def dumps(message: dict[str, Any]) -> bytes:
    """Encode one outgoing frame, newline included."""
    return orjson.dumps(message) + NEWLINE


def valid_id(value: Any) -> bool:
    """JSON-RPC ids are strings, numbers or null; booleans are not numbers here."""
    return value is None or (not isinstance(value, bool) and isinstance(value, str | int | float))


def parse_request(line: bytes) -> dict[str, Any]:
    """Decode one frame into a request object.

    Raises:
        BadFrame: carrying ParseError (not UTF-8, not JSON, nested too deep)
            or InvalidRequest (JSON that is not a single request object).
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
    if isinstance(request, list):
        raise BadFrame(
            InvalidRequest("batch requests are not supported; send one request per line")
        )
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
