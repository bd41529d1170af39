"""What the checks read of the kernel's own accounting in /proc.

A few lines of parsing each, read directly: a library for them (psutil) cost
the idle daemon 0.7 MB of memory for these seven figures. Paths are
arguments so the parsers can be tried on sample files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# /proc/stat's "cpu" line: user nice system idle iowait irq softirq steal, then
# guest and guest_nice, which user and nice already count.
_CPU_FIELDS = 8
_IDLE, _IOWAIT = 3, 4


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mounts."""

    device: str
    mountpoint: str
    fstype: str
    options: str


def cpu_times(stat: str = "/proc/stat") -> tuple[float, float]:
    """(busy, total) CPU time of all CPUs since boot, in clock ticks.

    Busy is everything but idle and iowait; only the ratio of two samples'
    differences means anything.
    """
    with open(stat, encoding="ascii") as fh:
        fields = fh.readline().split()
    if not fields or fields[0] != "cpu":
        raise OSError(f"{stat}: no cpu line")
    ticks = [float(v) for v in fields[1 : 1 + _CPU_FIELDS]]
    total = sum(ticks)
    idle = ticks[_IDLE] + (ticks[_IOWAIT] if len(ticks) > _IOWAIT else 0.0)
    return total - idle, total


def boot_time(stat: str = "/proc/stat") -> float:
    """When the system booted (seconds since the epoch): `btime`."""
    with open(stat, encoding="ascii") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError(f"{stat}: no btime line")


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo in bytes, by field name (`MemTotal`, `SwapFree`, …)."""
    out: dict[str, int] = {}
    with open(path, encoding="ascii") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if not parts:
                continue
            value = int(parts[0])
            out[name] = value * 1024 if parts[1:2] == ["kB"] else value
    return out


def memory(path: str = "/proc/meminfo") -> tuple[int, int]:
    """(total, available) RAM in bytes.

    Available is the kernel's own estimate of what can be had without
    swapping (`MemAvailable`, Linux 3.14+); before it, free plus the page
    cache and buffers.
    """
    info = meminfo(path)
    total = info["MemTotal"]
    available = info.get("MemAvailable")
    if available is None:
        available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
    return total, min(available, total)


def swap(path: str = "/proc/meminfo") -> tuple[int, int]:
    """(total, used) swap in bytes."""
    info = meminfo(path)
    total = info.get("SwapTotal", 0)
    return total, max(total - info.get("SwapFree", 0), 0)


def process_states(proc: str = "/proc") -> tuple[int, int]:
    """(processes, zombies) now; a process that exits while being read is not counted."""
    total = zombies = 0
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as fh:
                line = fh.read()
        except OSError:  # exited meanwhile
            continue
        # The command name is in parentheses and may hold anything, ")" too.
        after_name = line.rfind(b")") + 2
        state = line[after_name : after_name + 1]
        total += 1
        if state == b"Z":
            zombies += 1
    return total, zombies


def mounts(path: str = "/proc/self/mounts") -> list[Mount]:
    """Every mount this process sees, in mount order."""
    found: list[Mount] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 4:
                continue
            device, mountpoint, fstype, options = (unescape(f) for f in fields[:4])
            found.append(Mount(device, mountpoint, fstype, options))
    return found


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes in mount tables (\\040 for a space)."""
    if "\\" not in field:
        return field
    return field.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
