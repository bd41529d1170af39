"""`cortexctl update`: check [--force], snapshot, rollback [--list] [ID], apply --packages."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cortexctl.client import Client
from cortexctl.output import Output, ago

EXIT_OK = 0
EXIT_FAILED = 1
LONG_TIMEOUT = 86400.0 + 900.0
BOX_WIDTH = 47


def _box(title: str, rows: list[str]) -> list[str]:
    inner = max([BOX_WIDTH, len(title) + 2, *(len(r) + 2 for r in rows)])
    top = "╭" + "─" * inner + "╮"
    lines = [top, "│" + title.center(inner) + "│", "├" + "─" * inner + "┤"]
    lines += ["│ " + r.ljust(inner - 1) + "│" for r in rows]
    return [*lines, "╰" + "─" * inner + "╯"]


def _check(client: Client, args: argparse.Namespace, out: Output) -> int:
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
    if result.get("force_limited"):
        rows.append(
            f"Not refreshed now: once per updates.force_interval; next in "
            f"{result['next_force_in']:.0f} s"
        )
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
        if data.get("phase") == "snapshot":
            out.line(f"snapshot {data['snapshot']} taken")
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
    if not args.packages:
        print("cortexctl: say what to apply: update apply --packages", file=sys.stderr)
        return 2
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


def register(sub: Any) -> None:
    """Add `update` and its actions to the top-level subparsers."""
    update = sub.add_parser(
        "update",
        help="package updates, snapshots and rollback",
        epilog=(
            "examples:\n  cortexctl update check\n  cortexctl update check --force\n"
            "  sudo cortexctl update apply --packages --security -y\n"
            "  sudo cortexctl update rollback --list\n"
            "  sudo cortexctl update rollback 20261123-120000"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = update.add_subparsers(dest="update_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="pending updates (cached; --force refreshes)")
    check.add_argument("--force", action="store_true", help="refresh the package lists first")
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
    apply.add_argument("--security", action="store_true", help="security updates only")
    apply.add_argument(
        "--only", action="append", default=[], metavar="PKG", help="only this package"
    )
    apply.add_argument("-y", "--yes", action="store_true", help="apply without asking")
    apply.set_defaults(run=_apply)
