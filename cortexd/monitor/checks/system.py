"""Host checks: failed units, clock sync, DNS, connectivity, pending reboot."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cortexd.alerts.model import Severity
from cortexd.host.commands import Runner, have, run_command
from cortexd.host.systemd import SYSTEMD_RUNTIME, failed_units
from cortexd.host.systemd import parse_failed_units as parse_failed_units
from cortexd.monitor.check import Check, Finding, Status

REBOOT_FLAG = "/run/reboot-required"
CONNECT_TIMEOUT = 3.0

# -- systemd_failed -------------------------------------------------------------


class SystemdFailed(Check):
    id = "systemd_failed"
    name = "Failed units"
    category = "services"
    alert_category = "service"
    description = "systemd units in the failed state"
    interval = 60.0
    fail_severity = Severity.ERROR
    fix_id = "restart_unit"

    def __init__(self, runner: Runner = run_command, runtime_dir: str = SYSTEMD_RUNTIME) -> None:
        self.runner = runner
        self.runtime_dir = runtime_dir

    def collect(self) -> list[Finding]:
        if not os.path.isdir(self.runtime_dir):
            return [
                Finding(
                    f"systemd is not PID 1 on this host ({self.runtime_dir} is missing)",
                    status=Status.SKIP,
                    details={"failed_units": None},
                )
            ]
        units = failed_units(self.runner)
        if not units:
            return [Finding("no failed units", status=Status.PASS, details={"failed_units": []})]
        names = [u["unit"] for u in units]
        return [
            Finding(
                f"{u['unit']} failed ({u['sub']})",
                status=Status.FAIL,
                labels={"unit": u["unit"]},
                details={**u, "failed_units": names},
            )
            for u in units
        ]


# -- time_sync ------------------------------------------------------------------

TIME_ERROR = 5
STA_UNSYNC = 0x0040


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """struct timex from <sys/timex.h> (Linux, glibc)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    )


def kernel_clock_state() -> tuple[int, int, int]:
    """(adjtimex return state, status flags, max error in µs); modes 0 only reads."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(state), int(tx.status), int(tx.maxerror)


class TimeSync(Check):
    id = "time_sync"
    name = "Time synchronisation"
    category = "system"
    description = "whether the kernel considers the clock NTP-synchronised (adjtimex)"
    interval = 300.0

    def collect(self) -> list[Finding]:
        try:
            state, status, maxerror = kernel_clock_state()
        except PermissionError:
            # The unit's ProtectClock= refuses even a read-only adjtimex(2);
            # timedated answers the same question over the bus.
            return [self._from_timedated()]
        details = {"state": state, "status_flags": status, "maxerror_us": maxerror}
        if state == TIME_ERROR or status & STA_UNSYNC:
            return [
                Finding(
                    "the kernel reports the clock as not synchronised (no NTP discipline)",
                    status=Status.WARN,
                    details={**details, "synchronised": False},
                )
            ]
        return [
            Finding(
                f"clock synchronised (max error {maxerror / 1000:.1f} ms)",
                status=Status.PASS,
                details={**details, "synchronised": True},
            )
        ]

    def _from_timedated(self) -> Finding:
        if not have("timedatectl"):
            return Finding(
                "adjtimex is not permitted here (ProtectClock) and timedatectl is missing",
                status=Status.SKIP,
            )
        try:
            result = run_command(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Finding(f"cannot ask timedated: {exc}", status=Status.SKIP)
        answer = result.stdout.strip()
        if result.returncode != 0 or answer not in ("yes", "no"):
            reason = result.stderr.strip() or "no answer"
            return Finding(
                f"adjtimex is not permitted here and timedated did not answer: {reason}",
                status=Status.SKIP,
            )
        details = {"source": "timedated", "synchronised": answer == "yes"}
        if answer == "yes":
            return Finding("clock synchronised (timedated)", status=Status.PASS, details=details)
        return Finding(
            "timedated reports the clock as not synchronised",
            status=Status.WARN,
            details=details,
        )


# -- dns_resolution / network_connectivity -----------------------------------------

DEFAULT_DNS_NAMES = ("deb.debian.org",)
DEFAULT_TARGETS = ("deb.debian.org:443",)


class DnsResolution(Check):
    id = "dns_resolution"
    name = "DNS resolution"
    category = "network"
    description = "the resolver answers for the configured names"
    interval = 300.0
    timeout = 15.0

    def __init__(self, names: Sequence[str] = DEFAULT_DNS_NAMES) -> None:
        self.names = tuple(names)

    def collect(self) -> list[Finding]:
        resolved: dict[str, list[str]] = {}
        failed: dict[str, str] = {}
        for name in self.names:
            try:
                infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
                resolved[name] = sorted({str(i[4][0]) for i in infos})
            except OSError as exc:
                failed[name] = str(exc)
        details = {"resolved": resolved, "failed": failed}
        if not failed:
            return [Finding(f"resolved {', '.join(resolved)}", status=Status.PASS, details=details)]
        what = "; ".join(f"{n}: {e}" for n, e in failed.items())
        status = Status.FAIL if not resolved else Status.WARN
        return [Finding(f"cannot resolve {what}", status=status, details=details)]


def default_route(
    route_file: str = "/proc/net/route", ipv6_file: str = "/proc/net/ipv6_route"
) -> bool:
    """Whether the kernel has an IPv4 or IPv6 default route."""
    try:
        with open(route_file, encoding="ascii") as fh:
            next(fh, None)
            if any(line.split()[1:2] == ["00000000"] for line in fh):
                return True
    except OSError:
        pass
    try:
        with open(ipv6_file, encoding="ascii") as fh:
            return any(
                line.split()[:2] == ["0" * 32, "00"] and line.split()[-1] != "lo" for line in fh
            )
    except OSError:
        return False


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not host:
        raise ValueError(f"target {target!r} needs host:port")
    return host.strip("[]"), int(port)


class NetworkConnectivity(Check):
    id = "network_connectivity"
    name = "Network connectivity"
    category = "network"
    description = "a default route exists and a configured host:port accepts TCP"
    interval = 300.0
    timeout = 20.0

    def __init__(self, targets: Sequence[str] = DEFAULT_TARGETS) -> None:
        self.targets = tuple(targets)

    def collect(self) -> list[Finding]:
        route = default_route()
        reached: dict[str, float] = {}
        failed: dict[str, str] = {}
        for target in self.targets:
            started = time.perf_counter()
            try:
                host, port = _host_port(target)
                with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
                    reached[target] = round((time.perf_counter() - started) * 1000, 2)
            except (OSError, ValueError) as exc:
                failed[target] = str(exc)
        details = {"default_route": route, "reached_ms": reached, "failed": failed}
        if self.targets and not reached:
            what = "; ".join(f"{t}: {e}" for t, e in failed.items())
            return [Finding(f"no target reachable: {what}", status=Status.FAIL, details=details)]
        if not route:
            return [
                Finding(
                    f"no default route (reached {', '.join(reached) or 'nothing'})",
                    status=Status.WARN,
                    details=details,
                )
            ]
        if failed:
            return [
                Finding(f"unreachable: {', '.join(failed)}", status=Status.WARN, details=details)
            ]
        return [
            Finding(
                f"default route present; reached {', '.join(reached) or 'no targets configured'}",
                status=Status.PASS,
                details=details,
            )
        ]


# -- reboot_required ------------------------------------------------------------


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


class RebootRequired(Check):
    id = "reboot_required"
    name = "Reboot required"
    category = "system"
    description = "Debian's /run/reboot-required flag and the packages that set it"
    interval = 300.0

    def __init__(self, flag: str = REBOOT_FLAG) -> None:
        self.flag = flag

    def collect(self) -> list[Finding]:
        found = read_reboot_flag(self.flag)
        if not found.required:
            return [Finding("no reboot required", status=Status.PASS, details={"packages": []})]
        what = f" for {', '.join(found.packages)}" if found.packages else ""
        return [
            Finding(
                f"a reboot is required{what}",
                status=Status.WARN,
                details={"packages": list(found.packages), "since": found.since},
            )
        ]
