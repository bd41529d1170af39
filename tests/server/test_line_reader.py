"""The socket line reader on a real socketpair: framing across and within reads, EOF and errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anyio
import pytest

from cortexd.server.lines import LineReader

WAIT = 10.0

Pair = tuple[LineReader, socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A reader on our end of a socketpair, our end and the peer's."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    reader = LineReader(ours)
    try:
        yield reader, ours, theirs
    finally:
        reader.close()  # before the socket, as the server does
        ours.close()
        theirs.close()


async def test_lines_sent_together_come_one_by_one_and_a_split_line_is_joined(pair: Pair) -> None:
    reader, _, theirs = pair
    theirs.sendall(b"one\ntwo\nthr")
    with anyio.fail_after(WAIT):
        assert await reader.receive_until(b"\n", 100) == b"one"
        assert await reader.receive_until(b"\n", 100) == b"two"

        async def finish() -> None:
            await anyio.sleep(0.05)
            theirs.sendall(b"ee\n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(finish)
            assert await reader.receive_until(b"\n", 100) == b"three"


async def test_a_last_line_without_newline_is_an_incomplete_read_kept_in_the_buffer(
    pair: Pair,
) -> None:
    reader, _, theirs = pair
    theirs.sendall(b'{"id":1}\n{"id":2}')
    theirs.shutdown(socket.SHUT_WR)
    with anyio.fail_after(WAIT):
        assert await reader.receive_until(b"\n", 100) == b'{"id":1}'
        with pytest.raises(anyio.IncompleteRead):
            await reader.receive_until(b"\n", 100)
    assert reader.buffer == b'{"id":2}'


async def test_a_line_over_the_limit_is_refused_before_its_newline_arrives(pair: Pair) -> None:
    reader, _, theirs = pair
    theirs.sendall(b"x" * 300)
    with anyio.fail_after(WAIT), pytest.raises(anyio.DelimiterNotFound):
        await reader.receive_until(b"\n", 256)


async def test_a_reset_connection_is_broken_after_the_lines_that_arrived(pair: Pair) -> None:
    reader, ours, theirs = pair
    theirs.sendall(b"last\n")
    with anyio.fail_after(WAIT):
        assert await reader.receive_until(b"\n", 100) == b"last"
    # Unread data in the closing end's receive buffer makes the close a reset.
    ours.send(b"unread")
    theirs.close()
    with anyio.fail_after(WAIT), pytest.raises(anyio.BrokenResourceError):
        await reader.receive_until(b"\n", 100)
