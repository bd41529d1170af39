"""Frames between the daemon and its inference runner: length-prefixed JSON.

Each frame is a 4-byte big-endian length followed by that many bytes of one
JSON object with an `op` member. JSON rather than pickle: the runner is the
part that may be corrupted (it runs llama.cpp on untrusted files), so the
daemon must be able to read what it sends without executing any of it.

The size of a frame is bounded both ways. The largest frame the daemon sends
is a request whose prompt came in one socket line (`server.max_request_bytes`
is at most 16 MiB); the runner sends small frames (a piece of text, a result
without the text). A length past the bound means a broken or hostile peer:
the reader stops instead of allocating it.

This module is imported by the runner, so it uses only the standard library
and orjson.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson

HEADER = struct.Struct(">I")
# The daemon's largest request line is 16 MiB; JSON escaping can double a
# prompt's bytes in the worst case, so room for that and the frame around it.
MAX_FRAME = 40 * 1024 * 1024
# What the runner may send: text pieces, a result, the model's description,
# an error with some stderr lines.
MAX_RUNNER_FRAME = 1024 * 1024

Frame = dict[str, Any]


class FrameError(Exception):
    """A frame that cannot be sent or was not well-formed; the message says which."""


def encode(frame: Frame, limit: int = MAX_FRAME) -> bytes:
    """The bytes of `frame` with its length header.

    Raises:
        FrameError: the encoded frame is larger than `limit`.
    """
    body = orjson.dumps(frame)
    if len(body) > limit:
        raise FrameError(f"a {frame.get('op')} frame of {len(body)} bytes exceeds {limit}")
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Frame:
    """One frame's body as an object with a string `op`.

    Raises:
        FrameError: not JSON, not an object, or no `op`.
    """
    try:
        frame = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"a frame is not JSON: {exc}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
        raise FrameError("a frame is not an object with an op")
    return frame


def check_length(length: int, limit: int) -> None:
    """Refuse a length header past `limit` before reading the body."""
    if length > limit:
        raise FrameError(f"a frame announces {length} bytes, more than the {limit} allowed")


def read_frame(sock: socket.socket, limit: int = MAX_FRAME) -> Frame | None:
    """Blocking read of the next frame; None at a clean end of stream.

    Raises:
        FrameError: the stream ended inside a frame, or the frame is bad.
        OSError: the socket failed.
    """
    header = _read_exactly(sock, HEADER.size, allow_eof=True)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    check_length(length, limit)
    body = _read_exactly(sock, length, allow_eof=False)
    assert body is not None
    return decode(body)


def _read_exactly(sock: socket.socket, n: int, *, allow_eof: bool) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:])
        if count == 0:
            if got == 0 and allow_eof:
                return None
            raise FrameError(f"the stream ended {got} bytes into a {n}-byte read")
        got += count
    return bytes(buf)
