"""Disk facts: usage, where the space went (a bounded `du`), deleted-but-open files, the journal.

The walk stays on the alert's filesystem (like `du -x`), never follows
symlinks, counts allocated blocks (so sparse files count for what they use)
and each hard-linked inode once. It stops at the context's deadline, at a
depth limit and at an entry limit, and says so in its provenance.
"""

from __future__ import annotations

import heapq
import os
import stat
import time
from dataclasses import dataclass, field

from cortexd.explain.facts.model import Context, Found, Gatherer, percent, size

MAX_DEPTH = 8
MAX_ENTRIES = 300_000
# Directories are reported down to this depth below the mountpoint; deeper
# space counts towards them.
REPORT_DEPTH = 3
TOP = 5
# A directory whose one child holds this much of it is shown through that child.
CHILD_DOMINATES = 0.9
DEADLINE_CHECK_EVERY = 512
BLOCK = 512


def _usage(mountpoint: str) -> tuple[int, int, int, int]:
    """(used bytes, total bytes, used inodes, total inodes) of the filesystem."""
    st = os.statvfs(mountpoint)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    return used, used + avail, st.f_files - st.f_ffree, st.f_files


def disk_usage(ctx: Context, found: Found) -> None:
    mountpoint = ctx.labels["mountpoint"]
    used, total, inodes_used, inodes = _usage(mountpoint)
    used_pct = 100.0 * used / total if total else 0.0
    inode_pct = 100.0 * inodes_used / inodes if inodes else 0.0
    found.add(
        "disk.usage",
        mountpoint,
        f"{mountpoint} is {used_pct:.0f}% full ({size(used)} of {size(total)}), "
        f"inodes {inode_pct:.0f}% used ({inodes_used} of {inodes})",
        f"statvfs({mountpoint})",
        used_percent=round(used_pct, 2),
        inodes_percent=round(inode_pct, 2),
        used_bytes=used,
        total_bytes=total,
    )


@dataclass(slots=True)
class Walk:
    """What a bounded walk of one filesystem saw."""

    dirs: dict[str, int] = field(default_factory=dict)  # reported dirs -> bytes below them
    entries: dict[str, int] = field(default_factory=dict)  # dir -> direct entries
    files: list[tuple[int, str]] = field(default_factory=list)  # a min-heap of the largest
    count: int = 0
    too_deep: int = 0
    unreadable: int = 0
    complete: bool = True
    seconds: float = 0.0


def walk(
    root: str,
    deadline: float,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
) -> Walk:
    """Sizes below `root` on its own filesystem, within the deadline and limits."""
    started = time.monotonic()
    out = Walk()
    device = os.lstat(root).st_dev
    seen: set[int] = set()
    stack: list[tuple[str, int, tuple[str, ...]]] = [(root, 0, ())]
    while stack:
        if time.monotonic() >= deadline or out.count >= max_entries:
            out.complete = False
            break
        path, depth, parts = stack.pop()
        owners = [
            os.path.join(root, *parts[:k]) for k in range(1, min(len(parts), REPORT_DEPTH) + 1)
        ]
        try:
            listing = os.scandir(path)
        except OSError:
            out.unreadable += 1
            continue
        direct = 0
        with listing:
            for entry in listing:
                direct += 1
                out.count += 1
                if out.count % DEADLINE_CHECK_EVERY == 0 and (
                    time.monotonic() >= deadline or out.count >= max_entries
                ):
                    out.complete = False
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    out.unreadable += 1
                    continue
                if st.st_dev != device:
                    continue  # another filesystem mounted below: not this one's space
                blocks = st.st_blocks * BLOCK
                if stat.S_ISDIR(st.st_mode):
                    if depth < max_depth:
                        stack.append((entry.path, depth + 1, (*parts, entry.name)))
                    else:
                        out.too_deep += 1
                    here = [*owners, os.path.join(root, *parts, entry.name)][:REPORT_DEPTH]
                else:
                    if st.st_nlink > 1:
                        if st.st_ino in seen:
                            continue
                        seen.add(st.st_ino)
                    here = owners
                    if stat.S_ISREG(st.st_mode):
                        item = (blocks, entry.path)
                        if len(out.files) < TOP:
                            heapq.heappush(out.files, item)
                        elif item > out.files[0]:
                            heapq.heapreplace(out.files, item)
                for owner in here:
                    out.dirs[owner] = out.dirs.get(owner, 0) + blocks
        out.entries[path] = direct
    out.seconds = time.monotonic() - started
    return out


def _telling_dirs(dirs: dict[str, int]) -> list[tuple[str, int]]:
    """The biggest directories, each shown through its child when one child holds nearly all."""
    ranked = sorted(dirs.items(), key=lambda item: (-item[1], item[0]))
    shown: list[tuple[str, int]] = []
    for path, used in ranked:
        dominated = any(
            os.path.dirname(other) == path and other_used >= CHILD_DOMINATES * used
            for other, other_used in dirs.items()
        )
        if used > 0 and not dominated:
            shown.append((path, used))
        if len(shown) >= TOP:
            break
    return shown


def biggest_dirs(ctx: Context, found: Found) -> None:
    mountpoint = ctx.labels["mountpoint"]
    used, _total, inodes_used, _inodes = _usage(mountpoint)
    seen = walk(mountpoint, ctx.deadline)
    how = (
        f"walk of {mountpoint} (one filesystem, depth ≤ {MAX_DEPTH}, {seen.count} entries "
        f"in {seen.seconds:.2f} s{'' if seen.complete else ', stopped early'})"
    )
    if not seen.complete:
        found.note(
            f"the walk of {mountpoint} stopped after {seen.count} entries; sizes are lower bounds"
        )
    if seen.too_deep:
        found.note(f"{seen.too_deep} directories deeper than {MAX_DEPTH} levels were not walked")
    for path, bytes_ in _telling_dirs(seen.dirs):
        share = bytes_ / used if used else 0.0
        found.add(
            "disk.dir",
            path,
            f"{path} holds {size(bytes_)} ({percent(share)} of the used space)",
            how,
            bytes=bytes_,
            share=round(share, 4),
        )
    for bytes_, path in sorted(seen.files, reverse=True):
        share = bytes_ / used if used else 0.0
        found.add(
            "disk.file",
            path,
            f"{path} is {size(bytes_)} ({percent(share)} of the used space)",
            how,
            bytes=bytes_,
            share=round(share, 4),
        )
    crowded = sorted(seen.entries.items(), key=lambda item: (-item[1], item[0]))[:3]
    for path, count in crowded:
        share = count / inodes_used if inodes_used else 0.0
        found.add(
            "disk.dir_entries",
            path,
            f"{path} holds {count} entries directly ({percent(share)} of the used inodes)",
            how,
            entries=count,
            share=round(share, 4),
        )


def _comm(proc: str, pid: str) -> str:
    try:
        with open(os.path.join(proc, pid, "comm"), encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or "?"
    except OSError:
        return "?"


def deleted_open(ctx: Context, found: Found) -> None:
    mountpoint = ctx.labels["mountpoint"]
    device = os.stat(mountpoint).st_dev
    used = _usage(mountpoint)[0]
    proc = ctx.host.proc
    held: dict[int, tuple[int, str, str, str]] = {}  # inode -> (bytes, pid, path, fd path)
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        if ctx.expired():
            found.note("the scan for deleted open files stopped at the deadline")
            break
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            link = os.path.join(fd_dir, fd)
            try:
                target = os.readlink(link)
                if not target.endswith(" (deleted)"):
                    continue
                st = os.stat(link)
            except OSError:
                continue
            bytes_ = st.st_blocks * BLOCK
            # Empty ones (a shell's deleted here-document, a temp file) hold no space.
            if st.st_dev != device or not stat.S_ISREG(st.st_mode) or bytes_ == 0:
                continue
            if st.st_ino not in held or held[st.st_ino][0] < bytes_:
                held[st.st_ino] = (bytes_, pid, target[: -len(" (deleted)")], link)
    if not held:
        found.note(f"no deleted file on {mountpoint} is held open")
        return
    for bytes_, pid, path, link in sorted(held.values(), key=lambda h: (-h[0], h[2])):
        share = bytes_ / used if used else 0.0
        name = _comm(proc, pid)
        found.add(
            "disk.deleted_open",
            f"pid {pid} ({name})",
            f"{path} was deleted but pid {pid} ({name}) still holds it open: "
            f"{size(bytes_)} ({percent(share)} of the used space)",
            link,
            bytes=bytes_,
            share=round(share, 4),
            pid=int(pid),
        )


def journal_size(ctx: Context, found: Found) -> None:
    mountpoint = ctx.labels["mountpoint"]
    device = os.stat(mountpoint).st_dev
    used = _usage(mountpoint)[0]
    on_this = [d for d in ctx.host.journal_dirs if os.path.isdir(d) and os.stat(d).st_dev == device]
    if not on_this:
        found.note(f"the systemd journal is not on {mountpoint}")
        return
    for directory in on_this:
        total = 0
        for base, _dirs, files in os.walk(directory):
            for name in files:
                if name.endswith((".journal", ".journal~")):
                    try:
                        total += os.lstat(os.path.join(base, name)).st_blocks * BLOCK
                    except OSError:
                        continue
            if ctx.expired():
                found.note(f"the journal size of {directory} is a lower bound (deadline)")
                break
        share = total / used if used else 0.0
        found.add(
            "disk.journal",
            directory,
            f"the systemd journal in {directory} takes {size(total)} "
            f"({percent(share)} of the used space)",
            f"sizes of {directory}/**/*.journal",
            bytes=total,
            share=round(share, 4),
        )


SHARE = frozenset({"bytes", "share"})
GATHERERS = (
    Gatherer(
        "disk_usage",
        disk_usage,
        {"disk.usage": frozenset({"used_percent", "inodes_percent", "used_bytes", "total_bytes"})},
        needs="mountpoint",
        description="blocks and inodes in use (statvfs)",
    ),
    Gatherer(
        "biggest_dirs",
        biggest_dirs,
        {
            "disk.dir": SHARE,
            "disk.file": SHARE,
            "disk.dir_entries": frozenset({"entries", "share"}),
        },
        needs="mountpoint",
        description="where the space and inodes went (a bounded du -x)",
    ),
    Gatherer(
        "deleted_open",
        deleted_open,
        {"disk.deleted_open": SHARE | {"pid"}},
        needs="mountpoint",
        description="deleted files still held open (/proc/PID/fd)",
    ),
    Gatherer(
        "journal_size",
        journal_size,
        {"disk.journal": SHARE},
        needs="mountpoint",
        description="the systemd journal's size on this filesystem",
    ),
)
