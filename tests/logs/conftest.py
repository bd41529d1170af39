"""The `journal` fixture: a live journald, or a standalone one started for the test.

Shared with tests/test_logging.py, which owns how a standalone journald is run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.test_logging import Journal, _live_journald, standalone_journald


@pytest.fixture
def journal() -> Iterator[Journal]:
    if os.getuid() != 0:
        pytest.skip("reading and starting journald needs root")
    if _live_journald():
        yield Journal()
        return
    with standalone_journald() as started:
        yield started
