"""dpkg and apt as the host shows them: lock files and who holds them, the reboot flag.

Read by the checks, the fixes, the explanations and the update service alike.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from cortexd.config.schema import CheckSettings

LOCK_FILES = (
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
)
REBOOT_FLAG = "/run/reboot-required"


def held_locks(lock_files: Sequence[str], proc_locks: str = "/proc/locks") -> dict[str, int]:
    """Which of `lock_files` some process holds a lock on, with its pid (from /proc/locks)."""
    wanted: dict[tuple[int, int, int], str] = {}
    for path in lock_files:
        try:
            st = os.stat(path)
        except OSError:
            continue
        wanted[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = path
    held: dict[str, int] = {}
    with open(proc_locks, encoding="ascii", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if "->" in parts:  # a waiter, not a holder
                continue
            try:
                pid = int(parts[4])
                major, minor, inode = parts[5].split(":")
                key = (int(major, 16), int(minor, 16), int(inode))
            except (IndexError, ValueError):
                continue
            if key in wanted:
                held[wanted[key]] = pid
    return held


def lock_paths(root: str) -> list[str]:
    """The apt/dpkg lock files under `root` ("/" on a real host)."""
    return [os.path.join(root, p.lstrip("/")) for p in LOCK_FILES]


def stale_locks(root: str, proc_locks: str = "/proc/locks") -> tuple[list[str], dict[str, int]]:
    """(stale lock files, held lock files → pid) under `root`."""
    paths = lock_paths(root)
    held = held_locks(paths, proc_locks)
    stale: list[str] = []
    for path in paths:
        if path in held:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > 0:
            stale.append(path)
    return stale, held


@dataclass(frozen=True, slots=True)
class RebootFlag:
    """Debian's reboot flag as it is now: set or not, the packages that set it, since when."""

    required: bool
    packages: tuple[str, ...] = ()
    since: float | None = None


def read_reboot_flag(flag: str = REBOOT_FLAG) -> RebootFlag:
    """Read the flag file and its `.pkgs` list (blocking; never cached: it is a file test)."""
    try:
        since = os.stat(flag).st_mtime
    except FileNotFoundError:
        return RebootFlag(False)
    packages: set[str] = set()
    try:
        with open(flag + ".pkgs", encoding="utf-8", errors="replace") as fh:
            packages = {line.strip() for line in fh if line.strip()}
    except OSError:  # the list is a courtesy; the flag alone says a reboot is due
        pass
    return RebootFlag(True, tuple(sorted(packages)), since)


def reboot_flag_path(settings: CheckSettings) -> str:
    """The reboot flag `reboot_required` and `updates.check` read (`data_path` moves it)."""
    return settings.data_path or REBOOT_FLAG
