"""Collecting the answers of a JSON-RPC batch (JSON-RPC 2.0 §6) into one frame.

The connection dispatches a batch's members like requests of their own; each
member reports its answer here exactly once (a notification with None), and
the last one to finish sends every answer as one array. A batch of
notifications only is answered with nothing at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from cortexd.server.framing import dumps


class BatchAnswers:
    """The answers of one batch, sent together by `write` when its last member is done.

    If the connection is cancelled before that, nothing is sent: nobody is
    left to read it.
    """

    __slots__ = ("_answers", "_left", "_write")

    def __init__(self, members: int, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._answers: list[dict[str, Any]] = []
        self._left = members
        self._write = write

    async def done(self, answer: dict[str, Any] | None) -> None:
        """Record one member's answer (None for a notification); send all after the last."""
        if answer is not None:
            self._answers.append(answer)
        self._left -= 1
        if self._left == 0 and self._answers:
            await self._write(dumps(self._answers))
