"""Package checks on Debian: dpkg/apt state, pending updates, known CVEs.

apt and dpkg are only ever asked, never changed: `apt-get check` and the
upgrade simulation run with `Debug::NoLocking` so a check never takes (or
waits for) the package locks an administrator's apt run holds. Package
lists are not downloaded here; `apt_updates` reports against the lists the
system last fetched and says how old they are. The two update checks read
the daemon's one `PendingUpdates` (cortexd.host.pending), as `health` and
`updates.check` do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cortexd.alerts.model import Severity
from cortexd.host.commands import Runner, first_line, have, is_real, run_command
from cortexd.host.files import list_names
from cortexd.host.packages import LOCK_FILES, held_locks
from cortexd.host.pending import (
    DPKG_DIR,
    SIMULATION_TIMEOUT,
    PendingUpdates,
    Scan,
)

# Re-exported where they were first defined; they live in cortexd.host.
from cortexd.host.pending import NO_LOCK as NO_LOCK
from cortexd.host.pending import Upgrade as Upgrade
from cortexd.host.pending import parse_simulation as parse_simulation
from cortexd.monitor.check import Check, Finding, Status

# The package scans cost seconds of CPU; they first run a little after
# start-up so a daemon that starts (or a test daemon that lives briefly)
# serves quickly, then at their own interval.
HEAVY_FIRST_RUN_DELAY = 30.0
# apt_updates and security_updates run together: the second reads the scan
# the first made when it is this young (and dpkg has not changed since).
SHARED_SCAN_SECONDS = 60.0


def _no_apt() -> Finding | None:
    if not os.path.isdir(DPKG_DIR) or not have("dpkg") or not have("apt-get"):
        return Finding("no dpkg/apt on this host", status=Status.SKIP)
    return None


# -- apt_status ---------------------------------------------------------------


class AptStatus(Check):
    id = "apt_status"
    name = "APT status"
    category = "packages"
    alert_category = "dependency"
    description = "interrupted dpkg runs, half-installed packages, held package locks"
    interval = 300.0
    fix_id = "dpkg_configure"

    def __init__(self, runner: Runner = run_command, dpkg_dir: str = DPKG_DIR) -> None:
        self.runner = runner
        self.dpkg_dir = dpkg_dir

    def collect(self) -> list[Finding]:
        if is_real(self.runner) and (skip := _no_apt()):
            return [skip]
        problems: list[str] = []
        status = Status.PASS
        updates = os.path.join(self.dpkg_dir, "updates")
        pending = [n for n in list_names(updates) if n.isdigit()]
        if pending:
            problems.append("dpkg was interrupted; run `dpkg --configure -a`")
            status = Status.FAIL
        audit = self.runner(["dpkg", "--audit"], 60.0)
        audit_text = audit.stdout.strip()
        if audit.returncode != 0 or audit_text:
            problems.append(f"dpkg --audit reports: {first_line(audit_text or audit.stderr)}")
            status = Status.FAIL
        locks = held_locks([os.path.join(self.dpkg_dir, "lock-frontend"), *LOCK_FILES[1:]])
        if locks:
            held = ", ".join(f"{path} (pid {pid})" for path, pid in locks.items())
            problems.append(f"package locks held: {held}")
            if status is Status.PASS:
                status = Status.WARN
        message = "; ".join(problems) if problems else "dpkg and apt are consistent"
        return [
            Finding(
                message,
                status=status,
                severity=Severity.ERROR if status is Status.FAIL else None,
                details={
                    "interrupted": bool(pending),
                    "audit": audit_text[:2000],
                    "locks": dict(locks),
                },
            )
        ]


class DependencyConflicts(Check):
    id = "dependency_conflicts"
    name = "Dependency conflicts"
    category = "packages"
    alert_category = "dependency"
    description = "broken dependencies reported by `apt-get check`"
    interval = 3600.0
    timeout = SIMULATION_TIMEOUT + 10
    first_run_delay = HEAVY_FIRST_RUN_DELAY
    fix_id = "apt_fix_broken"
    fail_severity = Severity.ERROR

    def __init__(self, runner: Runner = run_command) -> None:
        self.runner = runner

    def collect(self) -> list[Finding]:
        if is_real(self.runner) and (skip := _no_apt()):
            return [skip]
        done = self.runner(["apt-get", *NO_LOCK, "-q", "check"], SIMULATION_TIMEOUT)
        text = (done.stdout + "\n" + done.stderr).strip()
        broken = [
            line.strip()
            for line in text.splitlines()
            if "Depends:" in line or "unmet" in line.lower() or line.startswith("E:")
        ]
        if done.returncode != 0 or broken:
            return [
                Finding(
                    f"apt-get check failed: {first_line('; '.join(broken) or text)}",
                    status=Status.FAIL,
                    details={"returncode": done.returncode, "problems": broken[:50]},
                )
            ]
        return [Finding("no broken dependencies", status=Status.PASS, details={"problems": []})]


# -- pending updates ------------------------------------------------------------


class _Updates(Check):
    category = "packages"
    interval = 3600.0
    timeout = SIMULATION_TIMEOUT + 10
    first_run_delay = HEAVY_FIRST_RUN_DELAY

    def __init__(self, pending: PendingUpdates | None = None) -> None:
        self.pending = pending or PendingUpdates()
        self.runner = self.pending.runner

    def scan(self) -> Scan:
        return self.pending.scan(SHARED_SCAN_SECONDS)


class AptUpdates(_Updates):
    id = "apt_updates"
    name = "Pending updates"
    alert_category = "apt_updates"
    description = "package upgrades available from the configured sources"

    def collect(self) -> list[Finding]:
        found = self.scan()
        if found.problem is not None:
            return [Finding(found.problem, status=Status.SKIP)]
        upgrades, age = found.upgrades, found.lists_age
        details = {
            "pending": len(upgrades),
            "security": sum(u.security for u in upgrades),
            "packages": [u.package for u in upgrades[:200]],
            "lists_age_seconds": round(age or 0),
        }
        if not upgrades:
            return [Finding("no pending updates", status=Status.PASS, details=details)]
        return [
            Finding(
                f"{len(upgrades)} updates pending",
                status=Status.WARN,
                severity=Severity.INFO,
                details=details,
            )
        ]


class SecurityUpdates(_Updates):
    id = "security_updates"
    name = "Security updates"
    category = "security"
    alert_category = "security_update"
    description = "pending upgrades that come from a security archive"

    def collect(self) -> list[Finding]:
        found = self.scan()
        if found.problem is not None:
            return [Finding(found.problem, status=Status.SKIP)]
        security, age = found.security, found.lists_age
        details = {
            "security": len(security),
            "packages": [f"{u.package} {u.candidate}" for u in security[:200]],
            "lists_age_seconds": round(age or 0),
        }
        if not security:
            return [Finding("no pending security updates", status=Status.PASS, details=details)]
        return [
            Finding(
                f"{len(security)} security updates pending",
                status=Status.WARN,
                severity=Severity.WARNING,
                details=details,
            )
        ]


# -- cve_scan -------------------------------------------------------------------

_CVE_LINE = re.compile(
    r"^(?P<id>(?:CVE-\d{4}-\d+|TEMP-\S+))\s+(?P<pkg>\S+)(?:\s+\((?P<flags>[^)]*)\))?\s*$"
)


@dataclass(frozen=True, slots=True)
class Vulnerability:
    id: str
    package: str
    flags: tuple[str, ...]

    @property
    def fixed(self) -> bool:
        return "fixed" in self.flags

    @property
    def high(self) -> bool:
        return "high urgency" in self.flags


def parse_debsecan(text: str) -> list[Vulnerability]:
    """Vulnerabilities from debsecan's summary output (`CVE-… pkg (flags)` lines)."""
    out = []
    for line in text.splitlines():
        found = _CVE_LINE.match(line.strip())
        if found:
            flags = tuple(f.strip() for f in (found.group("flags") or "").split(",") if f.strip())
            out.append(Vulnerability(found.group("id"), found.group("pkg"), flags))
    return out


class CveScan(Check):
    id = "cve_scan"
    name = "Known vulnerabilities"
    category = "security"
    alert_category = "cve_found"
    description = "CVEs affecting installed packages, from debsecan or an offline report"
    interval = 86400.0
    timeout = 660.0
    first_run_delay = HEAVY_FIRST_RUN_DELAY

    def __init__(self, data_path: str = "", runner: Runner = run_command) -> None:
        self.data_path = data_path
        self.runner = runner

    def collect(self) -> list[Finding]:
        if self.data_path:
            try:
                with open(self.data_path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
            except FileNotFoundError:
                return [Finding(f"no CVE data at {self.data_path}", status=Status.SKIP)]
            source = self.data_path
        elif not is_real(self.runner) or have("debsecan"):
            done = self.runner(["debsecan", "--format", "summary"], 600.0)
            if done.returncode != 0:
                return [
                    Finding(
                        f"debsecan could not fetch tracker data: {first_line(done.stderr)}",
                        status=Status.SKIP,
                    )
                ]
            text, source = done.stdout, "debsecan"
        else:
            return [
                Finding(
                    "no vulnerability data: debsecan is not installed and "
                    "checks.cve_scan.data_path is not set",
                    status=Status.SKIP,
                )
            ]
        vulns = parse_debsecan(text)
        fixable = [v for v in vulns if v.fixed]
        urgent = [v for v in fixable if v.high]
        details = {
            "source": source,
            "total": len(vulns),
            "fixable": len(fixable),
            "high_urgency_fixable": len(urgent),
            "packages": sorted({v.package for v in fixable})[:200],
            "cves": [v.id for v in (urgent or fixable)[:100]],
        }
        if urgent:
            return [
                Finding(
                    f"{len(urgent)} high-urgency CVEs have fixes available "
                    f"({len(vulns)} known in total)",
                    status=Status.FAIL,
                    details=details,
                )
            ]
        if fixable:
            return [
                Finding(
                    f"{len(fixable)} CVEs have fixes available ({len(vulns)} known in total)",
                    status=Status.WARN,
                    details=details,
                )
            ]
        return [
            Finding(
                f"no fixable CVEs ({len(vulns)} known without a fix)",
                status=Status.PASS,
                details=details,
            )
        ]
