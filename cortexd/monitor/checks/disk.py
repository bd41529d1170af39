"""disk_space: blocks and inodes of every real mounted filesystem, one per device."""

from __future__ import annotations

import os
from collections.abc import Sequence

from cortexd.host import procfs
from cortexd.monitor.check import Check, Finding, Status
from cortexd.monitor.thresholds import Thresholds

# Filesystems that hold no user data or are full by design (squashfs snaps,
# iso9660 media); tmpfs and devtmpfs live in RAM and are watched by `memory`
# unless a mountpoint is named in `include`.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fuse.gvfsd-fuse",
        "fuse.lxcfs",
        "fuse.snapfuse",
        "fusectl",
        "hugetlbfs",
        "iso9660",
        "mqueue",
        "nsfs",
        "proc",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
        "udf",
    }
)


def readonly_superblocks(mountinfo: str = "/proc/self/mountinfo") -> set[str]:
    """Mountpoints whose filesystem itself is read-only.

    The per-mount `ro` flag is not enough: systemd's ProtectSystem=strict
    remounts every view read-only inside the daemon's namespace while the
    filesystems stay writable for everyone else. The superblock options
    (after the " - " separator) say what the filesystem really is.
    """
    found: set[str] = set()
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return found
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5:
            continue
        super_options = tail.split()[2].split(",") if len(tail.split()) > 2 else []
        if "ro" in super_options:
            found.add(procfs.unescape(fields[4]))
    return found


class DiskSpace(Check):
    id = "disk_space"
    name = "Disk space"
    category = "disk"
    alert_category = "disk_usage"
    description = "block and inode use of each real mounted filesystem"
    interval = 30.0
    thresholds = Thresholds(80, 75, 90, 85, samples=1)
    fix_id = "vacuum_journal"

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = {os.path.normpath(p) for p in include}
        self.exclude = {os.path.normpath(p) for p in exclude}

    def mounts(self) -> list[tuple[str, str, str]]:
        """(device, mountpoint, fstype) of each filesystem to check, one per device."""
        seen: set[int] = set()
        chosen: list[tuple[str, str, str]] = []
        read_only = readonly_superblocks()
        parts = sorted(procfs.mounts(), key=lambda p: len(p.mountpoint))
        for part in parts:
            mountpoint = part.mountpoint
            if mountpoint in self.exclude:
                continue
            if mountpoint not in self.include:
                if part.fstype in PSEUDO_FILESYSTEMS or mountpoint in read_only:
                    continue
                if not os.path.isdir(mountpoint):  # a bind-mounted file (containers)
                    continue
            try:
                device = os.stat(mountpoint).st_dev
            except OSError:
                continue
            if device in seen:
                continue
            seen.add(device)
            chosen.append((part.device, mountpoint, part.fstype))
        return chosen

    def collect(self) -> list[Finding]:
        findings: list[Finding] = []
        found = set()
        for device, mountpoint, fstype in self.mounts():
            found.add(mountpoint)
            findings.append(self._measure(device, mountpoint, fstype))
        findings.extend(
            Finding(
                f"{missing} is not mounted",
                status=Status.WARN,
                labels={"mountpoint": missing},
                details={"mountpoint": missing, "mounted": False},
            )
            for missing in sorted(self.include - found)
        )
        if not findings:
            return [Finding("no real filesystems mounted", status=Status.SKIP)]
        return findings

    def _measure(self, device: str, mountpoint: str, fstype: str) -> Finding:
        st = os.statvfs(mountpoint)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        percent = 100.0 * used / (used + avail) if used + avail else 0.0
        inodes = None
        if st.f_files:
            inodes = 100.0 * (st.f_files - st.f_ffree) / st.f_files
        value = max(percent, inodes or 0.0)
        what = f"{mountpoint} {percent:.1f}% full"
        if inodes is not None:
            what += f", inodes {inodes:.1f}%"
        return Finding(
            what,
            value=value,
            labels={"mountpoint": mountpoint},
            details={
                "mountpoint": mountpoint,
                "device": device,
                "fstype": fstype,
                "total_bytes": st.f_blocks * st.f_frsize,
                "used_bytes": used,
                "available_bytes": avail,
                "used_percent": round(percent, 2),
                "inodes_used_percent": None if inodes is None else round(inodes, 2),
            },
        )
