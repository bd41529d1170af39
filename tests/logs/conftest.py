"""Fixtures of the log analyzer's tests.

`journal` is a live journald, or a standalone one started for the test (how
is owned by tests/test_logging.py). The authorization fixtures (throw-away
groups, an unprivileged runner, a daemon using those groups) come from
tests/test_auth.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.test_auth import auth_daemon as auth_daemon
from tests.test_auth import groups as groups
from tests.test_auth import python_for_nobody as python_for_nobody
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
