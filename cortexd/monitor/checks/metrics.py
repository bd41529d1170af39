"""Fast metric checks: CPU, load, memory, swap, file descriptors, processes.

All read /proc (cortexd/host/procfs.py); each is cheap enough to run
every few seconds.
"""

from __future__ import annotations

import os
import time
from collections import deque

from cortexd.alerts.model import Severity
from cortexd.host import procfs
from cortexd.monitor.check import Check, Finding, Status
from cortexd.monitor.thresholds import Thresholds

CPU_WINDOW = 300.0  # cpu_usage grades the 5-minute average
# Until a fifth of the window has passed the average is mostly the start-up
# burst (the daemon's own included): reported, but not graded.
MIN_WINDOW = CPU_WINDOW / 5
FIRST_SAMPLE_GAP = 0.25


def _read_int(path: str) -> int:
    with open(path, encoding="ascii") as fh:
        return int(fh.read().split()[0])


class CpuUsage(Check):
    id = "cpu_usage"
    name = "CPU usage"
    category = "performance"
    description = "CPU busy time averaged over the last 5 minutes"
    interval = 10.0
    thresholds = Thresholds(90, 80, 97, 90, samples=2)

    def __init__(self, min_window: float = MIN_WINDOW) -> None:
        self.min_window = min_window
        self._samples: deque[tuple[float, float, float]] = deque()

    def _sample(self) -> tuple[float, float, float]:
        busy, total = procfs.cpu_times()
        return time.monotonic(), busy, total

    def collect(self) -> list[Finding]:
        if not self._samples:
            self._samples.append(self._sample())
            time.sleep(FIRST_SAMPLE_GAP)  # on a worker thread; gives the first average a base
        now = self._sample()
        self._samples.append(now)
        while len(self._samples) > 2 and now[0] - self._samples[1][0] >= CPU_WINDOW:
            self._samples.popleft()
        start = self._samples[0]
        span = now[2] - start[2]
        usage = 100.0 * (now[1] - start[1]) / span if span > 0 else 0.0
        # The kernel's counters are sums of floats: an idle interval can come out a
        # hair below zero (or a busy one above 100), which no reader should see.
        usage = min(100.0, max(0.0, usage))
        window = now[0] - start[0]
        details = {
            "usage_percent": round(usage, 2),
            "window_seconds": round(window, 1),
            "cpus": os.cpu_count() or 1,
        }
        if window < self.min_window:
            return [
                Finding(
                    f"CPU {usage:.1f}% busy over {window:.0f}s; graded once "
                    f"{self.min_window:.0f}s of samples are in",
                    status=Status.SKIP,
                    details=details,
                )
            ]
        return [
            Finding(
                f"CPU {usage:.1f}% busy over the last {window:.0f}s", value=usage, details=details
            )
        ]


class CpuLoad(Check):
    id = "cpu_load"
    name = "CPU load"
    category = "performance"
    description = "15-minute load average per CPU"
    interval = 10.0
    thresholds = Thresholds(2.0, 1.75, 4.0, 3.0, samples=2)

    def collect(self) -> list[Finding]:
        load1, load5, load15 = os.getloadavg()
        cpus = len(os.sched_getaffinity(0)) or 1
        per_cpu = load15 / cpus
        return [
            Finding(
                f"load {load1:.2f} {load5:.2f} {load15:.2f} on {cpus} CPUs "
                f"({per_cpu:.2f} per CPU over 15 min)",
                value=per_cpu,
                details={
                    "load_1": load1,
                    "load_5": load5,
                    "load_15": load15,
                    "cpus": cpus,
                    "load_15_per_cpu": round(per_cpu, 3),
                },
            )
        ]


class Memory(Check):
    id = "memory"
    name = "Memory"
    category = "memory"
    alert_category = "memory_usage"
    description = "RAM in use, excluding cache and buffers"
    interval = 10.0
    thresholds = Thresholds(85, 80, 95, 90, samples=2)

    def collect(self) -> list[Finding]:
        total, available = procfs.memory()
        used = total - available
        percent = 100.0 * used / total if total else 0.0
        return [
            Finding(
                f"memory {percent:.1f}% used ({used >> 20} of {total >> 20} MiB)",
                value=percent,
                details={
                    "total_bytes": total,
                    "used_bytes": used,
                    "available_bytes": available,
                    "used_percent": round(percent, 2),
                },
            )
        ]


class SwapUsage(Check):
    id = "swap_usage"
    name = "Swap usage"
    category = "memory"
    alert_category = "memory_usage"
    description = "swap space in use"
    interval = 10.0
    thresholds = Thresholds(80, 70, 95, 90, samples=2)

    def collect(self) -> list[Finding]:
        total, used = procfs.swap()
        if total == 0:
            return [
                Finding(
                    "no swap configured",
                    status=Status.PASS,
                    details={"total_bytes": 0, "used_bytes": 0, "used_percent": 0.0},
                )
            ]
        percent = 100.0 * used / total
        return [
            Finding(
                f"swap {percent:.1f}% used ({used >> 20} of {total >> 20} MiB)",
                value=percent,
                details={
                    "total_bytes": total,
                    "used_bytes": used,
                    "used_percent": round(percent, 2),
                },
            )
        ]


class FileDescriptors(Check):
    id = "file_descriptors"
    name = "File descriptors"
    category = "system"
    description = "open file handles against the system limit (fs.file-max)"
    interval = 30.0
    thresholds = Thresholds(80, 75, 90, 85, samples=1)

    def __init__(self, file_nr: str = "/proc/sys/fs/file-nr") -> None:
        self.file_nr = file_nr

    def collect(self) -> list[Finding]:
        with open(self.file_nr, encoding="ascii") as fh:
            allocated, _unused, maximum = (int(x) for x in fh.read().split()[:3])
        percent = 100.0 * allocated / maximum if maximum else 0.0
        return [
            Finding(
                f"{allocated} file handles of {maximum} ({percent:.2f}%)",
                value=percent,
                details={"allocated": allocated, "max": maximum, "used_percent": round(percent, 4)},
            )
        ]


class ZombieProcesses(Check):
    id = "zombie_processes"
    name = "Zombie processes"
    category = "performance"
    description = "processes that exited but were never reaped"
    interval = 30.0
    thresholds = Thresholds(10, 5, 50, 25, samples=3)
    fail_severity = Severity.ERROR

    def collect(self) -> list[Finding]:
        total, zombies = procfs.process_states()
        return [
            Finding(
                f"{zombies} zombie processes",
                value=float(zombies),
                details={"zombies": zombies, "processes": total},
            )
        ]


class ProcessCount(Check):
    id = "process_count"
    name = "Process count"
    category = "performance"
    description = "processes against the kernel's pid_max"
    interval = 30.0
    thresholds = Thresholds(80, 75, 90, 85, samples=2)

    def collect(self) -> list[Finding]:
        total, zombies = procfs.process_states()
        pid_max = _read_int("/proc/sys/kernel/pid_max")
        percent = 100.0 * total / pid_max if pid_max else 0.0
        return [
            Finding(
                f"{total} processes (pid_max {pid_max})",
                value=percent,
                details={
                    "processes": total,
                    "zombies": zombies,
                    "pid_max": pid_max,
                    "used_percent": round(percent, 4),
                },
            )
        ]
