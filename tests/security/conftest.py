"""Fixtures of the access tests: real accounts and a client they can run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.accounts import Accounts, Runner, accounts, skip_reason


@pytest.fixture(scope="session")
def accts() -> Iterator[Accounts]:
    """An outsider, a reader, a journal member and an admin, removed after the session."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with accounts() as made:
        yield made


@pytest.fixture(scope="session")
def runner(accts: Accounts) -> Iterator[Runner]:
    with Runner.prepared(accts["reader"]) as prepared:
        yield prepared
