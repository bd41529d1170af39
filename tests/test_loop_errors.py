"""asyncio's undeliverable errors go through the daemon's log, and a known race stays quiet."""

from __future__ import annotations

import asyncio
import logging

from cortexd.app import _loop_exception


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.levelno, record.getMessage()))


def test_a_late_wakeup_of_a_cancelled_socket_waiter_is_not_an_error() -> None:
    # Attached directly: whether "cortexd" propagates depends on set-up done
    # by other tests in this process.
    logger = logging.getLogger("cortexd.app")
    records = _Records()
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        future.cancel()
        late = {
            "message": "Exception in callback Future.set_result(None)",
            "exception": asyncio.InvalidStateError(),
            "handle": asyncio.Handle(future.set_result, (None,), loop),
        }
        real = {"message": "Task exception was never retrieved", "exception": RuntimeError()}
        _loop_exception(loop, late)
        _loop_exception(loop, real)
    finally:
        loop.close()
        logger.removeHandler(records)
        logger.setLevel(old_level)
    assert (logging.DEBUG, "late socket wake-up for a cancelled waiter ignored") in records.seen
    errors = [text for level, text in records.seen if level == logging.ERROR]
    assert errors == ["event loop: Task exception was never retrieved"]
