"""Shared fixtures: a real daemon process on a real Unix socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon import DaemonProcess, running_daemon


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    """A daemon with the default test config (no model), stopped after the test."""
    with running_daemon() as d:
        yield d
