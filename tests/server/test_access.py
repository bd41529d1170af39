"""Who may call what, tested wherever the suite runs: as a pure unit, and in-process over a
real socket with the peer's credentials injected (the setpriv tests in tests/test_auth.py
use real accounts, which need root)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from cortexd.protocol import ErrorCode
from cortexd.server import Authorizer, Method, Peer
from tests.server.harness import serving

ADMIN_GID = 4242
JOURNAL_GID = 4343
OTHER_GID = 4444
USER = 65534  # never root, never the test's own user


async def _noop(call: Any) -> dict[str, bool]:
    return {"ok": True}


READ = Method("r", _noop, access="read")
ADMIN = Method("a", _noop, access="admin")
JOURNAL = Method("j", _noop, access="journal")


def peer(uid: int, *groups: int) -> Peer:
    # Groups given up front: nothing is read from /proc for this made-up pid.
    return Peer(pid=0, uid=uid, gid=groups[0] if groups else uid, _groups=frozenset(groups))


@pytest.fixture
def authorizer() -> Authorizer:
    return Authorizer(lambda: ADMIN_GID, frozenset({JOURNAL_GID}))


@pytest.mark.parametrize(
    ("who", "read", "admin", "journal"),
    [
        (peer(USER, USER), True, False, False),
        (peer(USER, USER, OTHER_GID), True, False, False),
        (peer(USER, USER, JOURNAL_GID), True, False, True),
        (peer(USER, USER, ADMIN_GID), True, True, True),
        (peer(0), True, True, True),
    ],
    ids=["no groups", "another group", "journal group", "admin group", "root"],
)
def test_each_access_level_by_the_peers_groups(
    authorizer: Authorizer, who: Peer, read: bool, admin: bool, journal: bool
) -> None:
    assert authorizer.check(READ, who) is read
    assert authorizer.check(ADMIN, who) is admin
    assert authorizer.check(JOURNAL, who) is journal


def test_no_admin_group_on_the_host_leaves_admin_to_root(authorizer: Authorizer) -> None:
    missing = Authorizer(lambda: None, frozenset())
    assert not missing.check(ADMIN, peer(USER, USER, ADMIN_GID))
    assert not missing.check(JOURNAL, peer(USER, USER, JOURNAL_GID))
    assert missing.check(ADMIN, peer(0))


def as_peer(who: Peer) -> Any:
    def peer_of(sock: socket.socket) -> Peer:
        return who

    return peer_of


async def test_a_peer_outside_the_admin_group_is_refused_over_the_socket() -> None:
    authorizer = Authorizer(lambda: ADMIN_GID, frozenset({JOURNAL_GID}))
    async with serving(authorizer=authorizer, peer_of=as_peer(peer(USER, USER))) as served:
        conn = await served.connect()
        allowed = await conn.request("fast")
        assert allowed["result"] == {"fast": True}
        refused = await conn.request("admin_only", req_id=2)
        assert refused["error"]["code"] == ErrorCode.PERMISSION_DENIED
        assert refused["error"]["data"]["name"] == "PERMISSION_DENIED"
        # The connection stays usable after a refusal.
        again = await conn.request("fast", req_id=3)
        assert again["result"] == {"fast": True}


async def test_a_peer_in_the_admin_group_is_served_over_the_socket() -> None:
    authorizer = Authorizer(lambda: ADMIN_GID, frozenset({JOURNAL_GID}))
    who = peer(USER, USER, ADMIN_GID)
    async with serving(authorizer=authorizer, peer_of=as_peer(who)) as served:
        conn = await served.connect()
        answer = await conn.request("admin_only")
        assert answer.get("result") == {}, answer
