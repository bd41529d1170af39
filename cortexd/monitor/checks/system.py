"""Host checks: failed units, clock sync, DNS, connectivity, pending reboot."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from cortexd.alerts.model import Severity
from cortexd.host.clock import STA_UNSYNC, TIME_ERROR, kernel_clock_state
from cortexd.host.commands import Runner, have, run_command
from cortexd.host.network import default_route
from cortexd.host.packages import REBOOT_FLAG, read_reboot_flag
from cortexd.host.systemd import SYSTEMD_RUNTIME, failed_units
from cortexd.host.systemd import parse_failed_units as parse_failed_units
from cortexd.monitor.check import Check, Finding, Status

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
                infos = socket.getaddrinfo(_host_bytes(name), None, type=socket.SOCK_STREAM)
                resolved[name] = sorted({str(i[4][0]) for i in infos})
            except OSError as exc:
                failed[name] = str(exc)
        details = {"resolved": resolved, "failed": failed}
        if not failed:
            return [Finding(f"resolved {', '.join(resolved)}", status=Status.PASS, details=details)]
        what = "; ".join(f"{n}: {e}" for n, e in failed.items())
        status = Status.FAIL if not resolved else Status.WARN
        return [Finding(f"cannot resolve {what}", status=status, details=details)]


def _host_bytes(name: str) -> bytes | str:
    """An ASCII name as the bytes the resolver gets anyway; any other keeps
    going through Python's IDNA codec (whose tables, loaded on first use,
    cost the daemon 0.2 MB for names that never need them)."""
    return name.encode("ascii") if name.isascii() else name


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
                # create_connection hands the host to getaddrinfo, which takes bytes.
                address: tuple[Any, int] = (_host_bytes(host), port)
                with socket.create_connection(address, timeout=CONNECT_TIMEOUT):
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
