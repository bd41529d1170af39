"""Every registered method, called in every role, with real accounts against the real daemon.

The method list comes from the registry the daemon builds, so a method added
later is in this test without anyone adding it. Each role calls every method
once on one connection with a parameter no method takes: the access check
runs before the parameters are looked at, so a role that may call the method
gets INVALID_PARAMS (naming that parameter) and nothing runs, and a role that
may not gets PERMISSION_DENIED. Shutdown, restore and apply are called too,
without effect.

Roles: an outsider (in neither group: cannot open the socket at all), a
reader (the socket's group), a journal member (also `adm` or
`systemd-journal`), an admin (also the admin group), and root.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from cortexd.server import Method
from tests.daemon import DaemonProcess, running_daemon
from tests.security.accounts import PROBE, Accounts, Runner
from tests.security.registry import registered_methods

pytestmark = pytest.mark.root

PROBE_PARAM = "__access_probe__"
METHODS = registered_methods()
ROLES = ("outsider", "reader", "journal", "admin", "root")


def may_call(role: str, method: Method) -> bool:
    """What the method's declared access grants the role."""
    if role in ("admin", "root"):
        return True
    if role == "journal":
        return method.access in ("read", "journal")
    if role == "reader":
        return method.access == "read"
    return False


@pytest.fixture(scope="module")
def role_daemon(accts: Accounts) -> Iterator[DaemonProcess]:
    with running_daemon(accts.daemon_config()) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def answers(
    accts: Accounts, runner: Runner, role_daemon: DaemonProcess
) -> dict[str, list[dict[str, Any]]]:
    """Each role's answers, one per method in METHODS order."""
    requests = [(m.name, {PROBE_PARAM: 1}) for m in METHODS]
    found = {
        role: runner.calls(accts[role], role_daemon.socket_path, requests)
        for role in ("outsider", "reader", "journal", "admin")
    }
    as_root = subprocess.run(
        [sys.executable, "-c", PROBE, role_daemon.socket_path, json.dumps(requests)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found["root"] = [json.loads(line) for line in as_root.stdout.splitlines()]
    assert role_daemon.proc.poll() is None, "no call may have stopped the daemon"
    return found


def test_the_registry_is_what_the_daemon_serves(answers: dict[str, list[dict[str, Any]]]) -> None:
    assert len(answers["root"]) == len(METHODS)
    unknown = [
        m.name
        for m, a in zip(METHODS, answers["root"], strict=True)
        if a.get("error", {}).get("data", {}).get("name") == "METHOD_NOT_FOUND"
    ]
    assert unknown == []


def test_an_outsider_cannot_even_connect(answers: dict[str, list[dict[str, Any]]]) -> None:
    assert answers["outsider"] == [
        {"connect_error": 13, "message": answers["outsider"][0]["message"]}
    ]
    assert "Permission denied" in answers["outsider"][0]["message"]


@pytest.mark.parametrize("role", ["reader", "journal", "admin", "root"])
@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_each_role_gets_exactly_the_declared_access(
    answers: dict[str, list[dict[str, Any]]], accts: Accounts, role: str, method: Method
) -> None:
    answer = answers[role][METHODS.index(method)]
    error = answer.get("error")
    assert error is not None, f"{method.name} ran for {role}: {answer}"
    name = error["data"]["name"]
    if may_call(role, method):
        assert name == "INVALID_PARAMS", (role, method.name, error)
        assert error["data"]["param"] == PROBE_PARAM
    else:
        assert name == "PERMISSION_DENIED", (role, method.name, error)
        assert error["data"]["method"] == method.name
        assert error["data"]["uid"] == accts[role].uid
        if method.access == "journal":
            assert "adm, systemd-journal" in error["message"]
        assert accts.admin_group in error["message"]


def test_every_access_level_is_exercised() -> None:
    levels = {m.access for m in METHODS}
    assert levels == {"read", "admin", "journal"}
