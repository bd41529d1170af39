"""Monitor commands: `health` and `doctor`.

`doctor` follows the monitoring-plugin convention so it can serve as a
Nagios/Icinga/Sensu check — the one exception to cortexctl's general exit
codes: 0 OK, 1 any WARN, 2 any FAIL, 3 UNKNOWN (any ERROR, the daemon cannot
be reached, or a usage error).
"""

from __future__ import annotations

import time

from cortexctl.client import DEFAULT_TIMEOUT
from cortexd.protocol import CortexError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output

EXIT_OK = 0
CHECKS_WAIT = 630.0  # the daemon bounds checks.run at 600 s
DOCTOR_OK, DOCTOR_WARN, DOCTOR_FAIL, DOCTOR_UNKNOWN = 0, 1, 2, 3
DOCTOR_LABELS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
# How many still-running checks the progress line names.
WAITING_SHOWN = 3
COLOURS = {"PASS": "32", "WARN": "33", "FAIL": "31", "ERROR": "35", "SKIP": "2"}
HEALTH_COLOURS = {"healthy": "32", "degraded": "33", "unhealthy": "31"}


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _bytes(value: Any) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _level(out: Output, text: str, value: Any, warn: float, crit: float) -> str:
    if value is None:
        return text
    colour = "31" if value >= crit else "33" if value >= warn else "32"
    return out.paint(text, colour)


def _clock(when: Any) -> str:
    return "?" if when is None else time.strftime("%H:%M", time.localtime(when))


def _updates(updates: dict[str, Any]) -> str:
    """The `updates` row: the figures, or why there are none yet."""
    state = updates.get("state", "checked")
    if state == "not_checked":
        return f"not checked yet (first check at {_clock(updates.get('next_check_at'))})"
    if state == "changed":
        return f"packages changed at {_clock(updates.get('changed_at'))}; checking again shortly"
    if state == "unavailable":
        return f"unknown: {updates.get('problem')}"
    if state == "disabled":
        return "not checked (apt_updates is disabled)"
    return f"{updates['pending']} pending, {updates['security']} security"


def _health(client: Client, args: Any, out: Output) -> int:
    out.result(client.call("health"), lambda h: _show_health(out, h))
    return EXIT_OK


def _show_health(out: Output, h: dict[str, Any]) -> None:
    status = h["status"]
    out.line(f"{h['host']}: {out.paint(status, HEALTH_COLOURS.get(status, '0'))}")
    cpu, mem, swap = h["cpu"], h["memory"] or {}, h["swap"] or {}
    rows: list[tuple[str, Any]] = [
        ("cpu", _level(out, _pct(cpu["usage_percent"]), cpu["usage_percent"], 90, 97)),
        (
            "load",
            " ".join(f"{cpu[k]:.2f}" for k in ("load_1", "load_5", "load_15") if cpu[k] is not None)
            + f" ({cpu['count']} CPUs)",
        ),
        (
            "memory",
            _level(out, _pct(mem.get("used_percent")), mem.get("used_percent"), 85, 95)
            + f" of {_bytes(mem.get('total_bytes'))}",
        ),
        (
            "swap",
            "none" if not swap.get("total_bytes") else _pct(swap.get("used_percent")),
        ),
    ]
    for d in h["disks"]:
        used = d.get("used_percent")
        rows.append(
            (
                f"disk {d['mountpoint']}",
                _level(out, _pct(used), used, 80, 90) + f" of {_bytes(d.get('total_bytes'))}",
            )
        )
    procs = h["processes"]
    rows.append(("processes", f"{procs['total']} ({procs['zombies']} zombie)"))
    fds = h["file_descriptors"] or {}
    rows.append(("file handles", f"{fds.get('allocated', '-')} of {fds.get('max', '-')}"))
    rows.append(("uptime", f"{h['uptime_seconds'] / 3600:.1f} h"))
    failed = h["failed_units"]
    rows.append(("failed units", "unknown" if failed is None else ", ".join(failed) or "none"))
    rows.append(("updates", _updates(h["updates"])))
    rows.append(("alerts", f"{h['alerts']['active']} active"))
    out.table(rows)
    if h["stale_checks"]:
        out.line(out.paint(f"from before the restart: {', '.join(h['stale_checks'])}", "2"))


def run_checks(client: Client, args: Any, out: Output, params: dict[str, Any]) -> Any:
    """`checks.run` with `params`, showing on a terminal which checks are done.

    Checks may take up to their own timeout; the wait is the daemon's
    deadline rather than the general default unless `--timeout` was given.
    """
    wait = CHECKS_WAIT if args.timeout == DEFAULT_TIMEOUT else args.timeout
    with out.progress("running checks") as progress:
        if not progress.enabled:
            return client.call("checks.run", params or None, timeout=wait)
        pending: dict[str, None] = {}
        done = [0, 0]

        def show(data: Any) -> None:
            if not isinstance(data, dict):
                return
            if "checks" in data:
                pending.update(dict.fromkeys(data["checks"]))
            elif "check_id" in data:
                pending.pop(data["check_id"], None)
                done[:] = [data["done"], data["total"]]
            waiting = ", ".join(list(pending)[:WAITING_SHOWN])
            more = "…" if len(pending) > WAITING_SHOWN else ""
            total = done[1] or len(pending)
            progress.update(f"{done[0]} of {total} done; waiting for {waiting}{more}")

        return client.call("checks.run", {**params, "stream": True}, on_stream=show, timeout=wait)


def _doctor(client: Client, args: Any, out: Output) -> int:
    params: dict[str, Any] = {}
    if args.check:
        params["ids"] = args.check
    if args.category:
        params["category"] = args.category
    try:
        result = run_checks(client, args, out, params)
    except (CortexError, TimeoutError) as exc:
        message = exc.message if isinstance(exc, CortexError) else "no answer in time"
        if out.as_json:
            error = (
                exc.to_error()
                if isinstance(exc, CortexError)
                else {"message": message, "data": {"name": "NO_ANSWER"}}
            )
            out.json({"status": "UNKNOWN", "exit_code": DOCTOR_UNKNOWN, "error": error})
        else:
            out.line(f"DOCTOR UNKNOWN - {message}")
        return DOCTOR_UNKNOWN
    results = result["results"]
    statuses = {r["status"] for r in results}
    code = (
        DOCTOR_UNKNOWN
        if "ERROR" in statuses
        else DOCTOR_FAIL
        if "FAIL" in statuses
        else DOCTOR_WARN
        if "WARN" in statuses
        else DOCTOR_OK
    )
    out.result({**result, "exit_code": code}, lambda _: _show_doctor(out, args, result, code))
    return code


def _show_doctor(out: Output, args: Any, result: dict[str, Any], code: int) -> None:
    results = result["results"]
    counts = ", ".join(f"{n} {s}" for s, n in result["counts"].items() if n)
    notable = [r["check_id"] for r in results if r["status"] in ("WARN", "FAIL", "ERROR")]
    summary = f"{counts}" + (f": {', '.join(notable)}" if notable else "")
    out.line(f"DOCTOR {DOCTOR_LABELS[code]} - {summary}")
    width = max((len(r["check_id"]) for r in results), default=8)
    for r in results:
        status = out.paint(f"{r['status']:<5}", COLOURS.get(r["status"], "0"))
        out.line(f"{status} {r['check_id']:<{width}}  {r['message']}")
        if args.verbose:
            out.line(f"      {r['category']}, {r['duration_ms']:.0f} ms, fix: {r['fix_id'] or '-'}")
            for key, value in r["details"].items():
                out.line(f"      {key}: {value}")


# Commands without options of their own; the command line runs them without
# building a parser (see cortexctl.cli.FAST_COMMANDS).
SIMPLE_COMMANDS = {"health": _health}


def register(sub: Any) -> None:
    """Add `health` and `doctor` to the top-level subparsers."""
    from cortexctl.completion import CATEGORIES
    from cortexctl.parsing import command

    command(
        sub,
        "health",
        help="show the host's health snapshot",
        examples=["cortexctl health", "cortexctl health --json | jq .disks"],
    ).set_defaults(run=_health)
    doctor = command(
        sub,
        "doctor",
        help="run health checks now (Nagios-style exit codes)",
        description="Run the daemon's health checks now and report.",
        notes=(
            "exit codes (monitoring-plugin convention): 0 OK, 1 any WARN, 2 any FAIL,\n"
            "3 UNKNOWN (any ERROR, daemon unreachable, usage error)\n\n"
            "repair:\n  cortexctl doctor --fix          plan fixes for failing checks\n"
            "  sudo cortexctl doctor --fix --yes   apply them and re-check"
        ),
        examples=[
            "cortexctl doctor",
            "cortexctl doctor --check disk_space --verbose",
            "cortexctl doctor --category packages --json",
            "sudo cortexctl doctor --fix --yes",
        ],
    )
    doctor.add_argument("--check", action="append", metavar="CHECK_ID", help="only this check")
    doctor.add_argument(
        "--category",
        metavar="CATEGORY",
        help=f"only checks of this category ({', '.join(CATEGORIES)})",
    )
    doctor.add_argument("--verbose", "-v", action="store_true", help="show details")
    doctor.set_defaults(run=_doctor)
