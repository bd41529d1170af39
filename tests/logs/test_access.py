"""Who may read the journal, take backups and apply updates, as a real unprivileged user.

The journal holds authentication logs: reading it needs admin rights or
membership in `adm` or `systemd-journal`. Backups carry the alert history and
configuration secrets, restores and applies change the host: admin only.
"""

from __future__ import annotations

import grp

import pytest

from tests.daemon import DaemonProcess
from tests.test_auth import Groups, cortexctl_as


def _gid(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pytest.skip(f"no {name} group here")


@pytest.mark.root
def test_journal_needs_admin_or_a_journal_group(
    python_for_nobody: str, auth_daemon: DaemonProcess, groups: Groups
) -> None:
    plain = (groups.socket_gid,)
    denied = cortexctl_as(python_for_nobody, auth_daemon, plain, "logs", "errors")
    assert denied.returncode == 1
    assert "PERMISSION_DENIED" in denied.stderr
    for group in ("adm", "systemd-journal"):
        allowed = cortexctl_as(
            python_for_nobody, auth_daemon, (*plain, _gid(group)), "logs", "errors"
        )
        assert "PERMISSION_DENIED" not in allowed.stderr, (group, allowed.stderr)
    admin = cortexctl_as(
        python_for_nobody, auth_daemon, (*plain, groups.admin_gid), "logs", "errors"
    )
    assert "PERMISSION_DENIED" not in admin.stderr


@pytest.mark.root
def test_backup_restore_and_apply_are_admin_only(
    python_for_nobody: str, auth_daemon: DaemonProcess, groups: Groups
) -> None:
    plain = (groups.socket_gid,)
    for args in (
        ("backup", "/tmp/never-written.tar.gz"),
        ("update", "apply", "--packages", "-y"),
        ("update", "snapshot"),
        ("update", "rollback", "-y"),
    ):
        done = cortexctl_as(python_for_nobody, auth_daemon, plain, *args)
        assert done.returncode == 1, args
        assert "PERMISSION_DENIED" in done.stderr, (args, done.stderr)
    listed = cortexctl_as(python_for_nobody, auth_daemon, plain, "update", "rollback", "--list")
    assert listed.returncode == 0, listed.stderr
