"""`cortexctl update`: check [--force|--system], snapshot, rollback [--list] [ID],
apply --packages|--system.

`apply` and `rollback` stream their progress (apt's output); with `--json`
each stream message is the line `{"stream": …}` and the outcome the line
`{"result": …}`. A rollback overwrites the configuration, so it asks on a
terminal and needs `-y` elsewhere, as `restore` does.
"""

from __future__ import annotations

import time

from cortexctl.client import DaemonUnreachable
from cortexctl.commands.confirm import ask, require
from cortexctl.errors import UsageError
from cortexctl.output import ago
from cortexd.protocol import ShuttingDown

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output
    from cortexctl.progress import Progress

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
LONG_TIMEOUT = 86400.0 + 900.0
BOX_WIDTH = 47
PHASES = {
    "checking": "listing pending updates",
    "planned": "planned",
    "snapshot": "snapshot taken, running apt",
}
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


def _check(client: Client, args: Any, out: Output) -> int:
    if args.system:
        return _check_system(client, out)
    label = "refreshing the package lists" if args.force else "checking for updates"
    with out.progress(label):
        result = client.call("updates.check", {"force": args.force}, timeout=LONG_TIMEOUT)
    out.result(result, lambda r: _show_check(out, r))
    return EXIT_OK if result["available"] else EXIT_FAILED


def _show_check(out: Output, result: dict[str, Any]) -> None:
    if not result["available"]:
        out.line(f"cannot check for updates: {result['problem']}")
        return
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


def _snapshot(client: Client, args: Any, out: Output) -> int:
    with out.progress("taking a snapshot"):
        meta = client.call("updates.snapshot", None, timeout=LONG_TIMEOUT)["snapshot"]
    out.result(
        meta,
        lambda m: out.line(
            f"snapshot {m['id']}: {len(m['config'])} config file(s), "
            f"{len(m['databases'])} database(s), {m['packages']} packages"
        ),
    )
    return EXIT_OK


def _show_stream(out: Output, progress: Progress) -> Any:
    def show(data: Any) -> None:
        out.event(data)
        if out.as_json or not isinstance(data, dict):
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
        if isinstance(phase, str):
            progress.update(PHASES.get(phase, phase))

    return show


def _finish(out: Output, result: dict[str, Any], render: Any) -> None:
    """The outcome of a streamed call: a last JSON line, or `render` for people."""
    if out.as_json:
        out.json_line({"result": result})
    else:
        render(result)


def _rollback(client: Client, args: Any, out: Output) -> int:
    if args.list:
        found = client.call("updates.snapshots")["snapshots"]
        out.result(found, lambda f: _show_snapshots(out, f))
        return EXIT_OK
    which = f"snapshot {args.id}" if args.id else "the newest snapshot"
    question = f"Overwrite the configuration with that of {which}?"
    require(question, args.yes, "rolling back the configuration")
    params: dict[str, Any] = {"packages": args.packages}
    if args.id:
        params["id"] = args.id
    if args.packages:
        params["confirm"] = args.yes or ask("Also reinstall the snapshot's saved package versions?")
    with out.progress("rolling back") as progress:
        result = client.call(
            "updates.rollback", params, on_stream=_show_stream(out, progress), timeout=LONG_TIMEOUT
        )
    _finish(out, result, lambda r: _show_rollback(out, r))
    return EXIT_OK


def _show_snapshots(out: Output, found: list[dict[str, Any]]) -> None:
    if not found:
        out.line("no snapshots")
    for meta in found:
        debs = sum(1 for d in meta["debs"] if d.get("file"))
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(meta["created"]))
        out.line(f"{meta['id']}  {when}  {meta['reason']}  ({debs} saved .debs)")


def _show_rollback(out: Output, result: dict[str, Any]) -> None:
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


def _apply(client: Client, args: Any, out: Output) -> int:
    if args.packages == args.system:
        raise UsageError("say what to apply: update apply --packages or --system")
    if args.system:
        if args.security or args.only:
            raise UsageError("--security and --only go with --packages")
        return _apply_system(client, args, out)
    params: dict[str, Any] = {"security": args.security, "packages": args.only}
    confirm = args.yes or ask("Apply these updates now? (a snapshot is taken first)")
    if not confirm:
        out.say("simulating (apt -s); confirm with -y to apply")
    params["confirm"] = confirm
    label = "applying updates" if confirm else "simulating updates"
    with out.progress(label) as progress:
        result = client.call(
            "updates.apply", params, on_stream=_show_stream(out, progress), timeout=LONG_TIMEOUT
        )
    _finish(out, result, lambda r: _show_apply(out, r))
    return EXIT_OK if result["returncode"] == 0 else EXIT_FAILED


def _show_apply(out: Output, result: dict[str, Any]) -> None:
    names = ", ".join(p["package"] for p in result["packages"]) or "nothing to upgrade"
    word = "simulated" if result["simulated"] else "applied"
    if result["returncode"] == 0:
        out.line(f"{word}: {names}")
    else:
        out.line(f"update failed (exit {result['returncode']}); snapshot {result['snapshot']}")


# -- cortexd's own package ---------------------------------------------------------


def _check_system(client: Client, out: Output) -> int:
    with out.progress("reading the release channel"):
        result = client.call("updates.system_check", timeout=SYSTEM_TIMEOUT)
    out.result(result, lambda r: _show_system_check(out, r))
    return EXIT_OK


def _show_system_check(out: Output, result: dict[str, Any]) -> None:
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


def _outcome(last: dict[str, Any]) -> str:
    return str(last["outcome"] or last["state"])


def _apply_system(client: Client, args: Any, out: Output) -> int:
    confirm = args.yes or ask(
        "Install cortexd's newest release now? (a snapshot is taken first; the daemon restarts)"
    )
    if not confirm:
        out.say("simulating (apt -s); confirm with -y to install")
    label = "installing cortexd's newest release" if confirm else "simulating the install"
    with out.progress(label) as progress:
        result = client.call(
            "updates.system_apply",
            {"confirm": confirm},
            on_stream=_show_stream(out, progress),
            timeout=SYSTEM_TIMEOUT,
        )
    if result["to"] is None or result["simulated"]:
        _finish(out, result, lambda r: _show_simulated_system(out, r))
        return EXIT_OK if result.get("returncode", 0) == 0 else EXIT_FAILED
    with out.progress("waiting for the daemon to restart"):
        last = _wait_for_outcome(client, result["apply_id"], out)
    _finish(out, {**result, "last_apply": last}, lambda r: _show_system_outcome(out, r))
    if last is None or last.get("state") != "finished":
        return EXIT_FAILED
    return EXIT_OK if last["outcome"] == "updated" else EXIT_FAILED


def _show_simulated_system(out: Output, result: dict[str, Any]) -> None:
    if result["to"] is None:
        out.line(result["message"])
        return
    word = "would install" if result.get("returncode") == 0 else "cannot install"
    now = result["from"] or "not a package"
    out.line(f"simulated: {word} cortexd {result['to']} (installed: {now})")


def _show_system_outcome(out: Output, result: dict[str, Any]) -> None:
    last = result["last_apply"]
    if last is None or last.get("state") != "finished":
        out.line(f"no outcome within {SYSTEM_WAIT:g}s; `cortexctl update check --system` shows it")
    elif last["outcome"] == "updated":
        out.line(f"cortexd {last['to']} is running (was {last['from']})")
    else:
        out.line(
            f"cortexd {last['to']} failed: {last.get('failure') or last['outcome']};"
            f" {_outcome(last)} (snapshot {result['snapshot']})"
        )


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
                if found["state"] != seen and found["state"] != "finished":
                    out.say(f"  {found['state']}")
                seen = found["state"]
                if found["state"] == "finished":
                    return found
        except (DaemonUnreachable, ShuttingDown, TimeoutError):
            client.close()  # the daemon is restarting: dial again
        time.sleep(POLL)
    return last


def register(sub: Any) -> None:
    """Add `update` and its actions to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    update = command(
        sub,
        "update",
        help="package updates, snapshots and rollback",
        examples=[
            "cortexctl update check",
            "cortexctl update check --force",
            "cortexctl update check --system",
            "sudo cortexctl update apply --packages --security -y",
            "sudo cortexctl update apply --system -y",
            "sudo cortexctl update rollback --list",
            "sudo cortexctl update rollback 20261123-120000",
        ],
    )
    verbs = actions(update, "update_command")
    check = command(
        verbs,
        "check",
        help="pending updates (cached; --force refreshes); --system: cortexd's release channel",
        notes="Exit status 1 when apt cannot tell what is pending.",
        examples=[
            "cortexctl update check",
            "sudo cortexctl update check --force --json",
            "cortexctl update check --system",
        ],
    )
    check.add_argument("--force", action="store_true", help="refresh the package lists first")
    check.add_argument(
        "--system", action="store_true", help="cortexd's own package: installed and newest"
    )
    check.set_defaults(run=_check)
    snap = command(
        verbs,
        "snapshot",
        help="take a snapshot now (admin)",
        examples=["sudo cortexctl update snapshot"],
    )
    snap.set_defaults(run=_snapshot)
    rollback = command(
        verbs,
        "rollback",
        help="restore a snapshot's configuration (admin)",
        notes=(
            "It overwrites the configuration: on a terminal it asks first, elsewhere it\n"
            "needs -y. With --packages the saved .debs are reinstalled when confirmed,\n"
            "else the reinstall is only simulated."
        ),
        examples=[
            "sudo cortexctl update rollback --list",
            "sudo cortexctl update rollback 20261123-120000",
            "sudo cortexctl update rollback 20261123-120000 --packages -y",
        ],
    )
    rollback.add_argument(
        "id", nargs="?", metavar="SNAPSHOT_ID", help="snapshot id (default: the newest)"
    )
    rollback.add_argument("--list", action="store_true", help="list snapshots")
    rollback.add_argument(
        "--packages", action="store_true", help="also reinstall the saved package versions"
    )
    rollback.add_argument("-y", "--yes", action="store_true", help="do not ask")
    rollback.set_defaults(run=_rollback)
    apply = command(
        verbs,
        "apply",
        help="apply package updates (admin; simulated unless confirmed)",
        notes="Without -y it asks on a terminal; elsewhere it only simulates (apt-get -s).",
        examples=[
            "sudo cortexctl update apply --packages",
            "sudo cortexctl update apply --packages --security -y",
            "sudo cortexctl update apply --packages --only openssl -y --json",
        ],
    )
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
