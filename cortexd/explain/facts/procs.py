"""Process facts: who holds the memory, the swap, the CPU, the file descriptors, the zombies.

Read straight from /proc (`stat`, `status`, `fd`, `limits`), one pass per
gatherer, so a host with thousands of processes costs milliseconds; a process
that exits while it is read is skipped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from cortexd.explain.facts.model import Context, Found, Gatherer, percent, size

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
# How long the CPU sample runs (shorter when the deadline is closer).
CPU_SAMPLE = 0.5
MIN_CPU_PERCENT = 1.0


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    comm: str
    state: str
    ppid: int
    ticks: int
    rss: int


def read_proc(proc: str, pid: str) -> Proc | None:
    """One process from /proc/PID/stat, or None when it is gone."""
    try:
        with open(os.path.join(proc, pid, "stat"), encoding="utf-8", errors="replace") as fh:
            raw = fh.read()
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    rest = tail.split()
    if len(rest) < 22:
        return None
    comm = head.partition("(")[2]
    return Proc(
        pid=int(pid),
        comm=comm,
        state=rest[0],
        ppid=int(rest[1]),
        ticks=int(rest[11]) + int(rest[12]),
        rss=int(rest[21]) * PAGE,
    )


def processes(proc: str) -> list[Proc]:
    out = []
    for pid in os.listdir(proc):
        if pid.isdigit():
            found = read_proc(proc, pid)
            if found is not None:
                out.append(found)
    return out


def meminfo(proc: str) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    with open(os.path.join(proc, "meminfo"), encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _who(p: Proc) -> str:
    return f"pid {p.pid} ({p.comm})"


# -- memory ---------------------------------------------------------------------------


def memory_usage(ctx: Context, found: Found) -> None:
    info = meminfo(ctx.host.proc)
    total = info.get("MemTotal", 0)
    used = total - info.get("MemAvailable", info.get("MemFree", 0))
    shmem = info.get("Shmem", 0)
    slab = info.get("SUnreclaim", 0)
    swap_total = info.get("SwapTotal", 0)
    swap_used = swap_total - info.get("SwapFree", 0)
    found.add(
        "memory.usage",
        "memory",
        f"{size(used)} of {size(total)} RAM in use ({percent(used / total if total else 0)}); "
        f"shared memory and tmpfs {size(shmem)}, unreclaimable kernel slab {size(slab)}; "
        f"swap {size(swap_used)} of {size(swap_total)}",
        f"{ctx.host.proc}/meminfo",
        used_percent=round(100.0 * used / total, 2) if total else 0.0,
        shmem_share=round(shmem / used, 4) if used else 0.0,
        slab_share=round(slab / used, 4) if used else 0.0,
        swap_used_bytes=swap_used,
    )


def top_rss(ctx: Context, found: Found) -> None:
    procs = processes(ctx.host.proc)
    total_rss = sum(p.rss for p in procs)
    ram = meminfo(ctx.host.proc).get("MemTotal", 0)
    for p in sorted(procs, key=lambda p: (-p.rss, p.pid))[:5]:
        if p.rss <= 0:
            break
        share = p.rss / total_rss if total_rss else 0.0
        found.add(
            "proc.rss",
            _who(p),
            f"{_who(p)} uses {size(p.rss)} resident ({percent(share)} of all process memory, "
            f"{percent(p.rss / ram if ram else 0)} of RAM)",
            f"{ctx.host.proc}/{p.pid}/stat (rss)",
            bytes=p.rss,
            share=round(share, 4),
            pid=p.pid,
        )


def _swap_of(proc: str, pid: int) -> int:
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmSwap:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def swap_users(ctx: Context, found: Found) -> None:
    procs = processes(ctx.host.proc)
    swapped = [(p, _swap_of(ctx.host.proc, p.pid)) for p in procs]
    total = sum(s for _, s in swapped)
    users = sorted(((p, s) for p, s in swapped if s > 0), key=lambda ps: (-ps[1], ps[0].pid))
    if not users:
        found.note("no process has memory in swap")
    for p, swap in users[:3]:
        share = swap / total if total else 0.0
        found.add(
            "proc.swap",
            _who(p),
            f"{_who(p)} has {size(swap)} in swap ({percent(share)} of all swapped memory)",
            f"{ctx.host.proc}/{p.pid}/status (VmSwap)",
            bytes=swap,
            share=round(share, 4),
            pid=p.pid,
        )


# -- CPU ------------------------------------------------------------------------------


def _cpu_line(proc: str) -> list[int]:
    with open(os.path.join(proc, "stat"), encoding="ascii") as fh:
        return [int(x) for x in fh.readline().split()[1:]]


def top_cpu(ctx: Context, found: Found) -> None:
    proc = ctx.host.proc
    before = {p.pid: p for p in processes(proc)}
    cpu_before = _cpu_line(proc)
    started = time.monotonic()
    time.sleep(max(0.05, min(CPU_SAMPLE, ctx.remaining() / 2)))
    after = processes(proc)
    cpu_after = _cpu_line(proc)
    elapsed = time.monotonic() - started
    deltas = [b - a for a, b in zip(cpu_before, cpu_after, strict=False)]
    total = sum(deltas[:8]) or 1  # user … steal; guest time is already in user
    idle, iowait = deltas[3], deltas[4]
    cpus = len(os.sched_getaffinity(0)) or 1
    busy = [
        (p, 100.0 * (p.ticks - before[p.pid].ticks) / (TICKS * elapsed))
        for p in after
        if p.pid in before
    ]
    busy_total = sum(b for _, b in busy) or 1.0
    blocked = [p for p in after if p.state == "D"]
    load_1, _load_5, load_15 = os.getloadavg()
    how = f"{proc}/stat and {proc}/PID/stat sampled over {elapsed:.2f} s"
    found.add(
        "cpu.usage",
        "cpu",
        f"CPU {100.0 * (total - idle - iowait) / total:.0f}% busy, iowait "
        f"{100.0 * iowait / total:.0f}% on {cpus} CPUs; load {load_1:.2f} (1 min) "
        f"{load_15:.2f} (15 min); {len(blocked)} processes waiting on I/O (state D)",
        how,
        busy_percent=round(100.0 * (total - idle - iowait) / total, 2),
        iowait_percent=round(100.0 * iowait / total, 2),
        cpus=cpus,
        load_15_per_cpu=round(load_15 / cpus, 3),
        blocked=len(blocked),
    )
    for p, pct in sorted(busy, key=lambda pb: (-pb[1], pb[0].pid))[:5]:
        if pct < MIN_CPU_PERCENT:
            break
        found.add(
            "proc.cpu",
            _who(p),
            f"{_who(p)} used {pct:.0f}% of a CPU ({percent(pct / busy_total)} of all process CPU)",
            how,
            percent=round(pct, 1),
            share=round(pct / busy_total, 4),
            pid=p.pid,
        )
    for p in blocked[:5]:
        found.add(
            "proc.blocked",
            _who(p),
            f"{_who(p)} is waiting on I/O (state D)",
            f"{proc}/{p.pid}/stat (state)",
            pid=p.pid,
        )


# -- zombies --------------------------------------------------------------------------


def zombie_parents(ctx: Context, found: Found) -> None:
    procs = processes(ctx.host.proc)
    by_pid = {p.pid: p for p in procs}
    counts: dict[int, int] = {}
    for p in procs:
        if p.state == "Z":
            counts[p.ppid] = counts.get(p.ppid, 0) + 1
    total = sum(counts.values())
    if not total:
        found.note("no zombie processes now")
    for ppid, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        parent = by_pid.get(ppid)
        who = _who(parent) if parent else f"pid {ppid}"
        found.add(
            "proc.zombie_parent",
            who,
            f"{who} has {n} zombie children it has not reaped",
            f"{ctx.host.proc}/PID/stat (state Z, ppid)",
            zombies=n,
            share=round(n / total, 4),
            pid=ppid,
            init=ppid == 1,
        )


def busy_parents(ctx: Context, found: Found) -> None:
    procs = processes(ctx.host.proc)
    by_pid = {p.pid: p for p in procs}
    counts: dict[int, int] = {}
    for p in procs:
        counts[p.ppid] = counts.get(p.ppid, 0) + 1
    for ppid, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]:
        parent = by_pid.get(ppid)
        who = _who(parent) if parent else f"pid {ppid}"
        found.add(
            "proc.parent",
            who,
            f"{who} has {n} child processes ({percent(n / len(procs))} of all processes)",
            f"{ctx.host.proc}/PID/stat (ppid)",
            children=n,
            share=round(n / len(procs), 4),
            pid=ppid,
        )


# -- file descriptors ---------------------------------------------------------------


def _nofile_limit(proc: str, pid: int) -> int:
    try:
        with open(os.path.join(proc, str(pid), "limits"), encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return int(soft) if soft.isdigit() else 0
    except (OSError, IndexError):
        pass
    return 0


def open_files(ctx: Context, found: Found) -> None:
    proc = ctx.host.proc
    with open(os.path.join(proc, "sys/fs/file-nr"), encoding="ascii") as fh:
        allocated, _unused, maximum = (int(x) for x in fh.read().split()[:3])
    found.add(
        "fds.system",
        "system",
        f"{allocated} file handles open of a system limit of {maximum}",
        f"{proc}/sys/fs/file-nr",
        allocated=allocated,
        max=maximum,
    )
    counts: list[tuple[int, Proc]] = []
    for p in processes(proc):
        if ctx.expired():
            found.note("the count of open files per process stopped at the deadline")
            break
        try:
            counts.append((len(os.listdir(os.path.join(proc, str(p.pid), "fd"))), p))
        except OSError:
            continue
    total = sum(n for n, _ in counts) or 1
    for n, p in sorted(counts, key=lambda np: (-np[0], np[1].pid))[:5]:
        limit = _nofile_limit(proc, p.pid)
        of_limit = n / limit if limit else 0.0
        found.add(
            "proc.fds",
            _who(p),
            f"{_who(p)} has {n} files open ({percent(n / total)} of all open by processes; "
            f"its limit is {limit or 'unknown'}"
            + (f", {percent(of_limit)} used)" if limit else ")"),
            f"{proc}/{p.pid}/fd and {proc}/{p.pid}/limits",
            count=n,
            limit=limit,
            share_of_limit=round(of_limit, 4),
            share=round(n / total, 4),
            pid=p.pid,
        )


GATHERERS = (
    Gatherer(
        "memory_usage",
        memory_usage,
        {
            "memory.usage": frozenset(
                {"used_percent", "shmem_share", "slab_share", "swap_used_bytes"}
            )
        },
        description="RAM, shared memory, kernel slab and swap in use (/proc/meminfo)",
    ),
    Gatherer(
        "top_rss",
        top_rss,
        {"proc.rss": frozenset({"bytes", "share", "pid"})},
        description="the processes with the most resident memory",
    ),
    Gatherer(
        "swap_users",
        swap_users,
        {"proc.swap": frozenset({"bytes", "share", "pid"})},
        description="the processes with the most memory in swap",
    ),
    Gatherer(
        "top_cpu",
        top_cpu,
        {
            "cpu.usage": frozenset(
                {"busy_percent", "iowait_percent", "cpus", "load_15_per_cpu", "blocked"}
            ),
            "proc.cpu": frozenset({"percent", "share", "pid"}),
            "proc.blocked": frozenset({"pid"}),
        },
        description="the busiest processes, iowait and processes waiting on I/O (a short sample)",
    ),
    Gatherer(
        "zombie_parents",
        zombie_parents,
        {"proc.zombie_parent": frozenset({"zombies", "share", "pid", "init"})},
        description="the parents of zombie processes",
    ),
    Gatherer(
        "busy_parents",
        busy_parents,
        {"proc.parent": frozenset({"children", "share", "pid"})},
        description="the processes with the most children",
    ),
    Gatherer(
        "open_files",
        open_files,
        {
            "fds.system": frozenset({"allocated", "max"}),
            "proc.fds": frozenset({"count", "limit", "share_of_limit", "share", "pid"}),
        },
        description="open file handles, system-wide and per process",
    ),
)
