"""Checks keep working inside the hardened unit's view of the host.

ProtectSystem=strict marks every mount read-only in the daemon's namespace and
ProtectClock= refuses adjtimex(2); neither may hide a real problem or turn a
check into a permanent ERROR.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cortexd.monitor.check import Status
from cortexd.monitor.checks import disk, system

# Recorded from a process under ProtectSystem=strict: /home's mount is "ro"
# for the daemon, but its superblock is "rw"; the squashfs is read-only for real.
MOUNTINFO = """\
22 1 254:0 / / ro,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro
40 22 254:16 / /home ro,nosuid,nodev,relatime shared:20 - ext4 /dev/vdb rw
41 22 7:0 / /snap/core/1 ro,nodev,relatime shared:21 - squashfs /dev/loop0 ro
42 22 0:50 / /mnt/with\\040space ro,relatime shared:22 - iso9660 /dev/sr0 ro
"""


def test_readonly_view_of_a_writable_filesystem_is_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    read_only = disk.readonly_superblocks(str(path))
    assert read_only == {"/snap/core/1", "/mnt/with space"}
    assert "/home" not in read_only and "/" not in read_only


def test_missing_mountinfo_excludes_nothing(tmp_path: Path) -> None:
    assert disk.readonly_superblocks(str(tmp_path / "absent")) == set()


def test_time_sync_without_adjtimex_never_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> tuple[int, int, int]:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(system, "kernel_clock_state", refused)
    [finding] = system.TimeSync().collect()
    # Here timedated may or may not answer; either way the outcome is a real
    # answer or a SKIP with its reason, never an exception (ERROR every cycle).
    assert finding.status in (Status.PASS, Status.WARN, Status.SKIP)
    if finding.status is Status.SKIP:
        assert "not permitted" in finding.message or "timedated" in finding.message
