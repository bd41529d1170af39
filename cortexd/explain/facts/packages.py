"""Package facts: who holds the apt/dpkg locks, stale lock files, dpkg's state.

Locks are read from /proc/locks, the table the checks read, so a lock is
"held" here exactly when `apt_status` says so; nothing here takes or waits
for a lock.
"""

from __future__ import annotations

import os
import time

from cortexd.explain.facts.model import Context, Found, Gatherer, clip
from cortexd.explain.facts.procs import TICKS, processes
from cortexd.host.packages import held_locks, lock_paths, stale_locks

# Programs that take the package locks, by their (15-character) comm.
PACKAGE_TOOLS = frozenset(
    {"apt", "apt-get", "aptitude", "dpkg", "unattended-upgr", "packagekitd", "apt.systemd.dai"}
)


def _boot_time(proc: str) -> float:
    with open(os.path.join(proc, "stat"), encoding="ascii") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _started(proc: str, pid: int) -> float | None:
    """When `pid` started (seconds since the epoch), from field 22 of its stat."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), encoding="utf-8", errors="replace") as fh:
            rest = fh.read().rpartition(")")[2].split()
        return _boot_time(proc) + int(rest[19]) / TICKS
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(proc: str, pid: int) -> str:
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as fh:
            return clip(fh.read().replace(b"\0", b" ").decode(errors="replace"), 80)
    except OSError:
        return ""


def _head(path: str) -> str:
    """The start of a (lock) file's content, for showing what some tool wrote there."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return clip(fh.read(64), 40)
    except OSError:
        return ""


def _age(seconds: float) -> str:
    for step, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= step:
            return f"{seconds / step:.0f} {unit}"
    return f"{seconds:.0f} s"


def apt_locks(ctx: Context, found: Found) -> None:
    proc = ctx.host.proc
    paths = lock_paths(ctx.host.apt_root)
    held = held_locks(paths, os.path.join(proc, "locks"))
    now = time.time()
    for path, pid in held.items():
        started = _started(proc, pid) if pid > 0 else None
        age = now - started if started is not None else -1.0
        command = _cmdline(proc, pid) if pid > 0 else ""
        who = f"pid {pid}" + (f" ({command})" if command else " (outside this namespace)")
        found.add(
            "apt.lock_holder",
            path,
            f"{path} is held by {who}" + (f", running for {_age(age)}" if age >= 0 else ""),
            f"{proc}/locks",
            pid=pid,
            age_seconds=round(age, 1),
        )
    if not held:
        found.note("no process holds an apt or dpkg lock")
    stale, _held = stale_locks(ctx.host.apt_root, os.path.join(proc, "locks"))
    for path in stale:
        content = _head(path)
        found.add(
            "apt.stale_lock",
            path,
            f"{path} is held by no process but is not the empty file dpkg leaves"
            + (f" (it contains {content!r})" if content else ""),
            f"lstat({path}) and {proc}/locks",
        )
    for p in processes(proc):
        if p.comm in PACKAGE_TOOLS:
            started = _started(proc, p.pid)
            age = now - started if started is not None else -1.0
            found.add(
                "apt.process",
                f"pid {p.pid} ({p.comm})",
                f"pid {p.pid} ({_cmdline(proc, p.pid) or p.comm}) runs"
                + (f", for {_age(age)}" if age >= 0 else ""),
                f"{proc}/{p.pid}/stat",
                pid=p.pid,
                age_seconds=round(age, 1),
            )


def dpkg_state(ctx: Context, found: Found) -> None:
    updates = os.path.join(ctx.host.apt_root, "var/lib/dpkg/updates")
    try:
        pending = sorted(n for n in os.listdir(updates) if n.isdigit())
    except OSError:
        pending = []
        found.note(f"{updates} cannot be read")
    if pending:
        found.add(
            "dpkg.interrupted",
            updates,
            f"{updates} holds {len(pending)} unfinished dpkg journal entries: a dpkg run "
            "was interrupted",
            f"listing of {updates}",
            pending=len(pending),
        )
    audit = ctx.check.item(ctx.labels).get("audit") if ctx.check is not None else None
    if isinstance(audit, str) and audit.strip():
        assert ctx.check is not None
        for line in [ln for ln in audit.splitlines() if ln.strip()][:3]:
            found.add(
                "dpkg.audit",
                "dpkg --audit",
                line,
                f"dpkg --audit in the monitor's last run of {ctx.check.check_id}",
            )


GATHERERS = (
    Gatherer(
        "apt_locks",
        apt_locks,
        {
            "apt.lock_holder": frozenset({"pid", "age_seconds"}),
            "apt.stale_lock": frozenset(),
            "apt.process": frozenset({"pid", "age_seconds"}),
        },
        description="who holds the apt/dpkg locks, stale lock files, running package tools",
    ),
    Gatherer(
        "dpkg_state",
        dpkg_state,
        {"dpkg.interrupted": frozenset({"pending"}), "dpkg.audit": frozenset()},
        description="interrupted dpkg runs and what dpkg --audit said",
    ),
)
