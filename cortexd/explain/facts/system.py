"""System facts: the check's own last word, a unit's state and journal, the clock, the network.

Commands (`systemctl show`, `journalctl`, `timedatectl`, `chronyc`) go through
the monitor's command runner: C locale, low priority, killed at their
deadline, which is never later than the explanation's.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import orjson

from cortexd.explain.facts.model import Context, Found, Gatherer
from cortexd.explain.facts.procs import processes
from cortexd.host.commands import CommandFailed, have
from cortexd.host.network import default_route
from cortexd.host.systemd import SYSTEMD_RUNTIME

UNIT_NAME = re.compile(r"^[A-Za-z0-9@._:\\-]{1,255}$")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".mount", ".path", ".target", ".scope", ".slice")
JOURNAL_LINES = 30
COMMAND_TIMEOUT = 5.0
# CLD_* codes systemd reports as ExecMainCode.
KILLED_CODES = {"2": "killed", "3": "dumped core"}
NTP_CLIENTS = {
    "chronyd": "chronyd",
    "systemd-timesyn": "systemd-timesyncd",  # comm is cut at 15 characters
    "ntpd": "ntpd",
    "openntpd": "openntpd",
}
TIME_ERROR = 5
STA_UNSYNC = 0x0040


def _ago(ts: float) -> str:
    seconds = max(0, int(time.time() - ts))
    for step, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= step:
            return f"{seconds // step} {unit} ago"
    return f"{seconds} s ago"


def _run(ctx: Context, argv: list[str]) -> str | None:
    """A command's stdout, or None (with a note) when it fails or cannot run in time."""
    budget = min(COMMAND_TIMEOUT, ctx.remaining())
    if budget <= 0.05:
        return None
    try:
        done = ctx.host.runner(argv, budget)
    except (OSError, CommandFailed, subprocess.TimeoutExpired):
        return None  # the caller notes what it could not learn
    if done.returncode != 0:
        return None
    return done.stdout


def check_result(ctx: Context, found: Found) -> None:
    check = ctx.check
    if check is None:
        found.note("the monitor has no result for this check yet")
        return
    item = check.item(ctx.labels)
    message = str(item.get("message") or check.message)
    status = str(item.get("status") or check.status)
    found.add(
        "check.result",
        check.check_id,
        f"{check.check_id} last said {status}: {message}",
        f"the monitor's last run of {check.check_id}, {_ago(check.finished_at)}",
        status=status,
    )


# -- units ------------------------------------------------------------------------------


def unit_journal(ctx: Context, found: Found) -> None:
    unit = ctx.labels["unit"]
    if not UNIT_NAME.match(unit):
        found.note(f"{unit!r} is not a unit name; its journal was not read")
        return
    if os.path.isdir(SYSTEMD_RUNTIME):
        _unit_state(ctx, found, unit)
    else:
        found.note("systemd is not PID 1 here; the unit's state is unknown")
    if not ctx.journal:
        found.note("the unit's journal lines are shown to admins and to adm and systemd-journal")
        return
    if not have("journalctl"):
        found.note("journalctl is not installed; the unit's journal was not read")
        return
    select = ["-u", unit] if unit.endswith(UNIT_SUFFIXES) else ["-t", unit]
    out = _run(
        ctx,
        ["journalctl", *select, "-n", str(JOURNAL_LINES), "-o", "json", "-q", "--no-pager"],
    )
    if out is None:
        found.note(f"the journal of {unit} could not be read")
        return
    lines: list[str] = []
    for raw in out.splitlines():
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        message = entry.get("MESSAGE")
        # systemd's own lines about the unit repeat what `systemctl show` said.
        if isinstance(message, str) and entry.get("SYSLOG_IDENTIFIER") != "systemd":
            lines.append(message)
    if not lines:
        found.note(f"the journal holds no lines from {unit} itself")
    for line in lines[-5:]:
        found.add("unit.log", unit, line, f"journalctl {' '.join(select)} -n {JOURNAL_LINES}")


def _unit_state(ctx: Context, found: Found, unit: str) -> None:
    props = ("ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts")
    out = _run(ctx, ["systemctl", "show", unit, "--no-pager", *(f"--property={p}" for p in props)])
    if out is None:
        found.note(f"systemctl show {unit} did not answer")
        return
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    result = values.get("Result", "")
    code, status = values.get("ExecMainCode", "0"), values.get("ExecMainStatus", "0")
    how = (
        f"its main process {KILLED_CODES[code]} (signal {status})"
        if code in KILLED_CODES
        else f"its main process exited with status {status}"
    )
    restarts = int(values.get("NRestarts", "0") or 0)
    found.add(
        "unit.state",
        unit,
        f"{unit} is {values.get('ActiveState', '?')} ({values.get('SubState', '?')}), "
        f"result {result or '?'}; {how}; restarted {restarts} times",
        f"systemctl show {unit}",
        result=result,
        exit_status=int(status) if status.lstrip("-").isdigit() else 0,
        signal=code in KILLED_CODES,
        restarts=restarts,
    )


# -- clock ------------------------------------------------------------------------------


def clock_state(ctx: Context, found: Found) -> None:
    try:
        state, status, maxerror = ctx.host.kernel_clock()
    except PermissionError:
        found.note("adjtimex is not permitted here (ProtectClock); the kernel was not asked")
    else:
        synced = not (state == TIME_ERROR or status & STA_UNSYNC)
        found.add(
            "clock.kernel",
            "kernel clock",
            "the kernel considers the clock synchronised"
            if synced
            else f"the kernel considers the clock not synchronised (max error "
            f"{maxerror / 1_000_000:.1f} s)",
            "adjtimex(2), read only",
            synchronised=synced,
            maxerror_ms=round(maxerror / 1000, 1),
        )
    running = [(p, NTP_CLIENTS[p.comm]) for p in processes(ctx.host.proc) if p.comm in NTP_CLIENTS]
    for p, name in running:
        found.add(
            "clock.ntp_client",
            name,
            f"{name} runs (pid {p.pid})",
            f"{ctx.host.proc}/{p.pid}/stat",
            pid=p.pid,
        )
    if not running:
        found.add(
            "clock.no_ntp_client",
            "NTP client",
            "no NTP client runs (looked for chronyd, systemd-timesyncd, ntpd, openntpd)",
            f"{ctx.host.proc}/PID/stat (comm)",
        )
    if os.path.isdir(SYSTEMD_RUNTIME) and have("timedatectl"):
        out = _run(ctx, ["timedatectl", "show", "--property=NTP", "--property=NTPSynchronized"])
        if out is not None:
            values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            enabled = values.get("NTP") == "yes"
            found.add(
                "clock.timedated",
                "timedated",
                f"timedated: NTP {'enabled' if enabled else 'disabled'}, "
                f"synchronised: {values.get('NTPSynchronized', '?')}",
                "timedatectl show",
                ntp_enabled=enabled,
                synchronised=values.get("NTPSynchronized") == "yes",
            )


# -- network ----------------------------------------------------------------------------


def _nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [
                parts[1]
                for parts in (line.split() for line in fh)
                if len(parts) >= 2 and parts[0] == "nameserver"
            ]
    except OSError:
        return []


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def network_state(ctx: Context, found: Found) -> None:
    proc = ctx.host.proc
    route = default_route(os.path.join(proc, "net/route"), os.path.join(proc, "net/ipv6_route"))
    found.add(
        "net.route",
        "default route",
        "a default route exists" if route else "there is no default route (IPv4 or IPv6)",
        f"{proc}/net/route, {proc}/net/ipv6_route",
        present=route,
    )
    names = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else []
    up = []
    for name in names:
        try:
            with open(f"/sys/class/net/{name}/operstate", encoding="ascii") as fh:
                state = fh.read().strip()
        except OSError:
            continue
        if name != "lo" and state in ("up", "unknown"):
            up.append(name)
    found.add(
        "net.interfaces",
        "interfaces",
        f"interfaces up besides loopback: {', '.join(up) or 'none'}",
        "/sys/class/net/*/operstate",
        up=len(up),
    )
    servers = _nameservers()
    found.add(
        "net.resolvers",
        "/etc/resolv.conf",
        f"/etc/resolv.conf names {len(servers)} nameservers",
        "/etc/resolv.conf",
        count=len(servers),
    )
    for server in servers[:3]:
        found.add(
            "net.nameserver",
            server,
            f"resolver {server} from /etc/resolv.conf"
            + (" (a local stub or cache)" if _is_loopback(server) else ""),
            "/etc/resolv.conf",
            loopback=_is_loopback(server),
        )
    if ctx.check is not None:
        failed = ctx.check.item(ctx.labels).get("failed") or {}
        if isinstance(failed, dict):
            for target, error in list(failed.items())[:3]:
                found.add(
                    "net.failure",
                    str(target),
                    f"{target}: {error}",
                    f"the monitor's last run of {ctx.check.check_id}",
                    error=str(error),
                )


GATHERERS = (
    Gatherer(
        "check_result",
        check_result,
        {"check.result": frozenset({"status"})},
        description="the check's own last result",
    ),
    Gatherer(
        "unit_journal",
        unit_journal,
        {
            "unit.state": frozenset({"result", "exit_status", "signal", "restarts"}),
            "unit.log": frozenset(),
        },
        needs="unit",
        description="a unit's state (systemctl show) and its last journal lines",
    ),
    Gatherer(
        "clock_state",
        clock_state,
        {
            "clock.kernel": frozenset({"synchronised", "maxerror_ms"}),
            "clock.ntp_client": frozenset({"pid"}),
            "clock.no_ntp_client": frozenset(),
            "clock.timedated": frozenset({"ntp_enabled", "synchronised"}),
        },
        description="the kernel's clock state, the NTP client, timedated",
    ),
    Gatherer(
        "network_state",
        network_state,
        {
            "net.route": frozenset({"present"}),
            "net.interfaces": frozenset({"up"}),
            "net.resolvers": frozenset({"count"}),
            "net.nameserver": frozenset({"loopback"}),
            "net.failure": frozenset({"error"}),
        },
        description="the default route, interfaces, resolvers and the last failures",
    ),
)
