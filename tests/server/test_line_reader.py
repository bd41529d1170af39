"""The socket line reader on a real socketpair: framing across and within reads, EOF and errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anyio
import pytest

from cortexd.server.lines import LineReader

WAIT = 10.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


async def test_lines_sent_together_come_one_by_one_and_a_split_line_is_joined(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = LineReader(ours)
    try:
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
    finally:
        reader.close()


async def test_a_last_line_without_newline_is_an_incomplete_read_kept_in_the_buffer(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = LineReader(ours)
    try:
        theirs.sendall(b'{"id":1}\n{"id":2}')
        theirs.shutdown(socket.SHUT_WR)
        with anyio.fail_after(WAIT):
            assert await reader.receive_until(b"\n", 100) == b'{"id":1}'
            with pytest.raises(anyio.IncompleteRead):
                await reader.receive_until(b"\n", 100)
        assert reader.buffer == b'{"id":2}'
    finally:
        reader.close()


async def test_a_line_over_the_limit_is_refused_before_its_newline_arrives(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = LineReader(ours)
    try:
        theirs.sendall(b"x" * 300)
        with anyio.fail_after(WAIT), pytest.raises(anyio.DelimiterNotFound):
            await reader.receive_until(b"\n", 256)
    finally:
        reader.close()


async def test_a_reset_connection_is_broken_after_the_lines_that_arrived(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = LineReader(ours)
    try:
        theirs.sendall(b"last\n")
        with anyio.fail_after(WAIT):
            assert await reader.receive_until(b"\n", 100) == b"last"
        # Unread data in the closing end's receive buffer makes the close a reset.
        ours.send(b"unread")
        theirs.close()
        with anyio.fail_after(WAIT), pytest.raises(anyio.BrokenResourceError):
            await reader.receive_until(b"\n", 100)
    finally:
        reader.close()
