"""`cortexctl update`: check [--force|--system], snapshot, rollback [--list] [ID],
apply --packages|--system."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cortexctl.client import Client, DaemonUnreachable
from cortexctl.output import Output, ago
from cortexd.protocol import CortexError, ShuttingDown

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
LONG_TIMEOUT = 86400.0 + 900.0
BOX_WIDTH = 47
# A system update: download, snapshot, then dpkg and a restart of the daemon.
SYSTEM_TIMEOUT = 3600.0
SYSTEM_WAIT = 900.0
POLL = 1.0
RESTART_CALL_TIMEOUT = 30.0


def _box(title: str, rows: list[str]) -> list[str]:
    inner = max([BOX_WIDTH, len(title) + 2, *(len(r) + 2 for r in rows)])
    top = "╭" + "─" * inner + "╮"
    lines = [top, "│" + title.center(inner) + "│", "├" + "─" * inner + "┤"]
    lines += ["│ " + r.ljust(inner - 1) + "│" for r in rows]
    return [*lines, "╰" + "─" * inner + "╯"]


def _check(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.system:
        return _check_system(client, out)
    result = client.call("updates.check", {"force": args.force}, timeout=LONG_TIMEOUT)
    if out.as_json:
        out.json(result)
        return EXIT_OK
    if not result["available"]:
        out.line(f"cannot check for updates: {result['problem']}")
        return EXIT_FAILED
    counts = result["counts"]
    rows = [
        f"Package updates: {counts['total']}",
        f"Security: {counts['security']}",
        f"Reboot required: {'Yes' if result['reboot_required'] else 'No'}",
        f"Package lists refreshed: {ago(result['lists_age_seconds'], 'never')}",
        f"Checked: {time.strftime('%Y-%m-%d %H:%M', time.localtime(result['checked_at']))}"
        + (" (cached)" if result["cached"] else ""),
    ]
    for line in _box("System Update", rows):
        out.line(line)
    out.line()
    for title, items in (("security", result["security"]), ("other", result["upgrades"])):
        if items:
            out.line(f"{title} updates:")
            for u in items:
                paint = out.paint(u["package"], "31" if u["security"] else "0")
                out.line(f"  {paint}  {u['from'] or '-'} → {u['to']}  ({u['origin']})")
    out.line(f"{counts['total']} package update(s) available")
    out.line(f"{counts['security']} security update(s)")
    return EXIT_OK


def _snapshot(client: Client, args: argparse.Namespace, out: Output) -> int:
    meta = client.call("updates.snapshot", None, timeout=LONG_TIMEOUT)["snapshot"]
    if out.as_json:
        out.json(meta)
    else:
        out.line(
            f"snapshot {meta['id']}: {len(meta['config'])} config file(s), "
            f"{len(meta['databases'])} database(s), {meta['packages']} packages"
        )
    return EXIT_OK


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _show_stream(out: Output) -> Any:
    def show(data: Any) -> None:
        if out.as_json:
            return
        for line in data.get("lines", []):
            out.line(f"  {line}")
        phase = data.get("phase")
        if phase == "snapshot":
            out.line(f"snapshot {data['snapshot']} taken")
        elif phase == "downloading":
            out.line(f"downloading cortexd {data['version']}")
        elif phase == "verified":
            out.line(f"SHA-256 verified: {data['sha256']}")
        elif phase == "installing":
            out.line(f"installing in the transient unit {data['unit']}; cortexd restarts")
        out.stream.flush()

    return show


def _rollback(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.list:
        found = client.call("updates.snapshots")["snapshots"]
        if out.as_json:
            out.json(found)
        elif not found:
            out.line("no snapshots")
        for meta in [] if out.as_json else found:
            debs = sum(1 for d in meta["debs"] if d.get("file"))
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(meta["created"]))
            out.line(f"{meta['id']}  {when}  {meta['reason']}  ({debs} saved .debs)")
        return EXIT_OK
    params: dict[str, Any] = {"packages": args.packages}
    if args.id:
        params["id"] = args.id
    if args.packages:
        params["confirm"] = _confirm("Reinstall the snapshot's saved package versions?", args.yes)
    result = client.call(
        "updates.rollback", params, on_stream=_show_stream(out), timeout=LONG_TIMEOUT
    )
    if out.as_json:
        out.json(result)
        return EXIT_OK
    out.line(f"rolled back to snapshot {result['snapshot']}")
    for path in result["config_restored"]:
        out.line(f"  configuration restored: {path}")
    changes = result["packages"]
    if changes["changed"]:
        out.line("packages changed since the snapshot:")
        for c in changes["changed"]:
            out.line(f"  {c['package']}  {c['snapshot']} → {c['current']}")
    for key, label in (("installed_since", "installed since"), ("removed_since", "removed since")):
        if changes[key]:
            out.line(f"{label}: {', '.join(changes[key][:50])}")
    if not any(changes.values()):
        out.line("installed packages are as in the snapshot")
    reinstall = result.get("reinstall")
    if reinstall is not None:
        word = "simulated" if reinstall["simulated"] else "done"
        out.line(f"package reinstall {word}: exit {reinstall['returncode']}")
    return EXIT_OK


def _apply(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.packages == args.system:
        print("cortexctl: say what to apply: update apply --packages or --system", file=sys.stderr)
        return EXIT_USAGE
    if args.system:
        if args.security or args.only:
            print("cortexctl: --security and --only go with --packages", file=sys.stderr)
            return EXIT_USAGE
        return _apply_system(client, args, out)
    params: dict[str, Any] = {"security": args.security, "packages": args.only}
    confirm = _confirm("Apply these updates now? (a snapshot is taken first)", args.yes)
    if not confirm and not args.yes:
        out.line("simulating (apt -s); confirm with -y to apply")
    params["confirm"] = confirm
    result = client.call("updates.apply", params, on_stream=_show_stream(out), timeout=LONG_TIMEOUT)
    if out.as_json:
        out.json(result)
        return EXIT_OK if result["returncode"] == 0 else EXIT_FAILED
    names = ", ".join(p["package"] for p in result["packages"]) or "nothing to upgrade"
    word = "simulated" if result["simulated"] else "applied"
    if result["returncode"] == 0:
        out.line(f"{word}: {names}")
        return EXIT_OK
    out.line(f"update failed (exit {result['returncode']}); snapshot {result['snapshot']}")
    return EXIT_FAILED


# -- cortexd's own package ---------------------------------------------------------


def _refused(exc: CortexError, out: Output) -> int:
    """An error answer, with the daemon's hint (no channel, not a package) when it gave one."""
    if out.as_json:
        out.json({"error": exc.to_error()})
    else:
        print(f"cortexctl: {exc.message}", file=sys.stderr)
        if exc.data.get("hint"):
            print(f"hint: {exc.data['hint']}", file=sys.stderr)
    return EXIT_FAILED


def _check_system(client: Client, out: Output) -> int:
    try:
        result = client.call("updates.system_check", timeout=SYSTEM_TIMEOUT)
    except CortexError as exc:
        return _refused(exc, out)
    if out.as_json:
        out.json(result)
        return EXIT_OK
    newest = result["newest"]
    installed = result["installed"] or f"not a package (running {result['running']})"
    if newest is None:
        latest = f"none for {result['architecture']}"
    else:
        latest = newest["version"] + (
            f" (released {newest['released']})" if newest["released"] else ""
        )
    rows = [
        f"Channel: {result['channel']}",
        f"Installed: {installed}",
        f"Newest: {latest}",
        f"Newer: {'Yes' if result['newer'] else 'No'}",
    ]
    if newest is not None:
        rows.append(f"Security: {'Yes' if newest['security'] else 'No'}")
    for line in _box("cortexd release", rows):
        out.line(line)
    last = result["last_apply"]
    if last is not None:
        out.line(f"last system update: {last['from']} → {last['to']}: {_outcome(last)}")
    if result["newer"]:
        out.line(
            f"cortexd {newest['version']} is available: sudo cortexctl update apply --system -y"
        )
    return EXIT_OK


def _outcome(last: dict[str, Any]) -> str:
    return str(last["outcome"] or last["state"])


def _apply_system(client: Client, args: argparse.Namespace, out: Output) -> int:
    confirm = _confirm(
        "Install cortexd's newest release now? (a snapshot is taken first; the daemon restarts)",
        args.yes,
    )
    if not confirm and not out.as_json:
        out.line("simulating (apt -s); confirm with -y to install")
    try:
        result = client.call(
            "updates.system_apply",
            {"confirm": confirm},
            on_stream=_show_stream(out),
            timeout=SYSTEM_TIMEOUT,
        )
    except CortexError as exc:
        return _refused(exc, out)
    if result["to"] is None or result["simulated"]:
        if out.as_json:
            out.json(result)
        elif result["to"] is None:
            out.line(result["message"])
        else:
            word = "would install" if result.get("returncode") == 0 else "cannot install"
            now = result["from"] or "not a package"
            out.line(f"simulated: {word} cortexd {result['to']} (installed: {now})")
        return EXIT_OK if result.get("returncode", 0) == 0 else EXIT_FAILED
    last = _wait_for_outcome(client, result["apply_id"], out)
    if out.as_json:
        out.json({**result, "last_apply": last})
    if last is None or last.get("state") != "finished":
        if not out.as_json:
            out.line(
                f"no outcome within {SYSTEM_WAIT:g}s; `cortexctl update check --system` shows it"
            )
        return EXIT_FAILED
    if not out.as_json:
        if last["outcome"] == "updated":
            out.line(f"cortexd {last['to']} is running (was {last['from']})")
        else:
            out.line(
                f"cortexd {last['to']} failed: {last.get('failure') or last['outcome']};"
                f" {_outcome(last)} (snapshot {result['snapshot']})"
            )
    return EXIT_OK if last["outcome"] == "updated" else EXIT_FAILED


def _wait_for_outcome(client: Client, apply_id: str, out: Output) -> dict[str, Any] | None:
    """Follow the system update through the daemon's restart(s) until it has finished."""
    deadline = time.monotonic() + SYSTEM_WAIT
    seen = None
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            status = client.call("status", timeout=RESTART_CALL_TIMEOUT)
            found: dict[str, Any] | None = (
                status["components"].get("updates", {}).get("system_apply")
            )
            if found is not None and found.get("id") == apply_id:
                last = found
                if found["state"] != seen and not out.as_json and found["state"] != "finished":
                    out.line(f"  {found['state']}")
                    out.stream.flush()
                seen = found["state"]
                if found["state"] == "finished":
                    return found
        except (DaemonUnreachable, ShuttingDown, TimeoutError):
            client.close()  # the daemon is restarting: dial again
        time.sleep(POLL)
    return last


def register(sub: Any) -> None:
    """Add `update` and its actions to the top-level subparsers."""
    update = sub.add_parser(
        "update",
        help="package updates, snapshots and rollback",
        epilog=(
            "examples:\n  cortexctl update check\n  cortexctl update check --force\n"
            "  cortexctl update check --system\n"
            "  sudo cortexctl update apply --packages --security -y\n"
            "  sudo cortexctl update apply --system -y\n"
            "  sudo cortexctl update rollback --list\n"
            "  sudo cortexctl update rollback 20261123-120000"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = update.add_subparsers(dest="update_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="pending updates (cached; --force refreshes); --system: cortexd's release channel",
    )
    check.add_argument("--force", action="store_true", help="refresh the package lists first")
    check.add_argument(
        "--system", action="store_true", help="cortexd's own package: installed and newest"
    )
    check.set_defaults(run=_check)
    snap = actions.add_parser("snapshot", help="take a snapshot now (admin)")
    snap.set_defaults(run=_snapshot)
    rollback = actions.add_parser("rollback", help="restore a snapshot's configuration (admin)")
    rollback.add_argument("id", nargs="?", help="snapshot id (default: the newest)")
    rollback.add_argument("--list", action="store_true", help="list snapshots")
    rollback.add_argument(
        "--packages", action="store_true", help="also reinstall the saved package versions"
    )
    rollback.add_argument("-y", "--yes", action="store_true", help="do not ask")
    rollback.set_defaults(run=_rollback)
    apply = actions.add_parser("apply", help="apply package updates (admin)")
    apply.add_argument("--packages", action="store_true", help="apply package updates")
    apply.add_argument(
        "--system",
        action="store_true",
        help="install the newest cortexd from its release channel (restarts the daemon)",
    )
    apply.add_argument("--security", action="store_true", help="security updates only")
    apply.add_argument(
        "--only", action="append", default=[], metavar="PKG", help="only this package"
    )
    apply.add_argument("-y", "--yes", action="store_true", help="apply without asking")
    apply.set_defaults(run=_apply)
