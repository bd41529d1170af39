"""Who gets one more connection: per-uid limits for non-admins, room kept for admins.

A pure test of `Admission` with peers whose uid and groups are given (the
real-account version, a reader holding connections while root shuts the
daemon down, is in tests/security/test_escalation.py).
"""

from __future__ import annotations

import os

import pytest

from cortexd.config import ServerConfig
from cortexd.server import Authorizer, Peer
from cortexd.server.core import Admission, per_user_limit, reserved_connections

ADMIN_GID = 4242
READER = 50001
OTHER_READER = 50002
ADMIN = 50003


def peer(uid: int, *groups: int) -> Peer:
    return Peer(pid=1, uid=uid, gid=uid, _groups=frozenset({uid, *groups}))


@pytest.fixture
def admission() -> Admission:
    assert os.getuid() not in (READER, OTHER_READER, ADMIN)
    return Admission(Authorizer(lambda: ADMIN_GID, frozenset()))


CONFIG = ServerConfig(max_connections=20, max_connections_per_user=3, reserved_connections=4)


def fill(admission: Admission, who: Peer, count: int, open_now: int) -> int:
    """Admit `who` `count` times (asserting each is admitted); returns the new open count."""
    for _ in range(count):
        assert admission.refusal(who, open_now, CONFIG) is None
        admission.opened(who.uid)
        open_now += 1
    return open_now


def test_a_reader_stops_at_the_per_user_limit_and_others_go_on(admission: Admission) -> None:
    open_now = fill(admission, peer(READER), 3, 0)
    refused = admission.refusal(peer(READER), open_now, CONFIG)
    assert refused is not None
    assert refused.data == {"limit": 3, "scope": "user"}
    assert f"uid {READER}" in refused.message
    fill(admission, peer(OTHER_READER), 3, open_now)
    admission.closed(READER)
    assert admission.held(READER) == 2
    assert admission.refusal(peer(READER), open_now, CONFIG) is None


def test_admins_and_root_have_no_per_user_limit(admission: Admission) -> None:
    open_now = fill(admission, peer(ADMIN, ADMIN_GID), 10, 0)
    fill(admission, peer(0), 5, open_now)


def test_the_last_connections_are_kept_for_root_and_admins(admission: Admission) -> None:
    open_now = 0
    for uid in range(60000, 60016):  # 16 readers, one connection each: 20 - 4 reserved
        open_now = fill(admission, peer(uid), 1, open_now)
    refused = admission.refusal(peer(READER), open_now, CONFIG)
    assert refused is not None and refused.data["scope"] == "reserved"
    assert "kept for root and admins" in refused.message
    open_now = fill(admission, peer(ADMIN, ADMIN_GID), 2, open_now)
    open_now = fill(admission, peer(0), 2, open_now)
    assert open_now == CONFIG.max_connections
    full = admission.refusal(peer(0), open_now, CONFIG)
    assert full is not None and full.data == {"limit": 20, "scope": "all"}


def test_the_common_case_reads_no_groups(admission: Admission) -> None:
    """Below every limit a reader is admitted from the counts alone."""
    reader = Peer(pid=1, uid=READER, gid=READER)
    assert admission.refusal(reader, 0, CONFIG) is None
    assert reader._groups is None


def test_defaults_follow_max_connections() -> None:
    assert per_user_limit(ServerConfig(max_connections=1024)) == 256
    assert per_user_limit(ServerConfig(max_connections=2)) == 1
    assert reserved_connections(ServerConfig(max_connections=1024)) == 8
    assert reserved_connections(ServerConfig(max_connections=4, reserved_connections=8)) == 3
