"""`cortexctl notify test|history` and `cortexctl dead-letter list|show|retry|purge`."""

from __future__ import annotations

import time

from cortexctl.commands.alerts import duration

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output

EXIT_OK = 0
EXIT_FAILED = 1
TEST_WAIT = 60.0


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _test(client: Client, args: Any, out: Output) -> int:
    # The daemon bounds the attempt itself; wait at least as long as it may take.
    wait = max(args.timeout or 0.0, TEST_WAIT)
    with out.progress(f"sending a test through {args.name}"):
        result = client.call("notify.test", {"action": args.name}, timeout=wait)
    out.result(result, lambda r: _show_test(out, r))
    return EXIT_OK if result["delivered"] else EXIT_FAILED


def _show_test(out: Output, result: dict[str, Any]) -> None:
    if result["delivered"]:
        out.line(f"{result['action']} ({result['type']}): delivered, answer {result['status']}")
        if result.get("answer", "").strip():
            out.line(result["answer"].strip())
    else:
        out.line(f"{result['action']} ({result['type']}): NOT delivered: {result['error']}")


def _history(client: Client, args: Any, out: Output) -> int:
    params: dict[str, Any] = {"since": time.time() - args.since, "limit": args.limit}
    if args.action:
        params["action"] = args.action
    out.result(client.call("notify.history", params), lambda r: _show_history(out, r))
    return EXIT_OK


def _show_history(out: Output, result: dict[str, Any]) -> None:
    if not result["notifications"] and not result["suppressed"]:
        out.line("no notifications")
    for n in result["notifications"]:
        title = n["event"]["alert"]["title"]
        error = f"  ({n['last_error']})" if n["last_error"] and n["status"] != "completed" else ""
        out.line(
            f"{n['id']:>6}  {_when(n['created_at'])}  {n['status']:<10} {n['kind']:<8} "
            f"{n['action']:<24} tries {n['attempts']}/{n['max_attempts']}  {title}{error}"
        )
    for s in result["suppressed"]:
        out.line(
            f"{'-':>6}  {_when(s['at'])}  held back  {s['kind']:<8} {s['reason']}: {s['title']}"
        )


def _dl_list(client: Client, args: Any, out: Output) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.queue:
        params["action"] = args.queue
    if args.since is not None:
        params["since"] = time.time() - args.since
    out.result(client.call("deadletter.list", params), lambda r: _show_dead(out, r))
    return EXIT_OK


def _show_dead(out: Output, result: dict[str, Any]) -> None:
    if not result["dead_letters"]:
        out.line("no dead letters")
    for d in result["dead_letters"]:
        out.line(
            f"{d['id']:>6}  {_when(d['failed_at'])}  {d['action']:<24} {d['kind']:<8} "
            f"after {d['attempts']} attempts: {d['last_error']}"
        )


def _dl_show(client: Client, args: Any, out: Output) -> int:
    dead = client.call("deadletter.show", {"id": args.id})["dead_letter"]
    out.result(dead, lambda d: _show_one(out, d))
    return EXIT_OK


def _show_one(out: Output, dead: dict[str, Any]) -> None:
    alert = dead["event"]["alert"]
    out.table(
        [
            ("id", dead["id"]),
            ("outbox id", dead["original_id"]),
            ("action", dead["action"]),
            ("kind", dead["kind"]),
            ("alert", f"{alert['severity']} {alert['title']}"),
            ("attempts", dead["attempts"]),
            ("last error", dead["last_error"]),
            ("created", _when(dead["created_at"])),
            ("failed", _when(dead["failed_at"])),
            ("answer", _body(dead)),
        ]
    )
    if dead.get("body"):
        out.line()
        out.line(dead["body"])


def _body(entry: dict[str, Any]) -> str:
    """What the server answered: its size; the text itself is shown to admins only."""
    size = entry.get("body_chars", 0)
    if not size:
        return "-"
    return f"{size} characters" + ("" if "body" in entry else " (shown to admins only)")


def _dl_retry(client: Client, args: Any, out: Output) -> int:
    params: dict[str, Any] = {}
    if args.id is not None:
        params["id"] = args.id
    if args.all:
        params["all"] = True
    if args.since is not None:
        params["since"] = time.time() - args.since
    if args.queue:
        params["action"] = args.queue
    out.result(client.call("deadletter.retry", params), lambda r: _show_retried(out, r))
    return EXIT_OK


def _show_retried(out: Output, result: dict[str, Any]) -> None:
    out.line(f"queued {len(result['retried'])} dead letter(s) again")
    if result.get("superseded"):
        out.line(
            f"dropped {len(result['superseded'])} that a later notification about the"
            " same alert replaced"
        )


def _dl_purge(client: Client, args: Any, out: Output) -> int:
    params = {"older_than_seconds": args.older_than} if args.older_than else None
    out.result(
        client.call("deadletter.purge", params),
        lambda r: out.line(f"purged {r['purged']} dead letter(s)"),
    )
    return EXIT_OK


def register(sub: Any) -> None:
    """Add `notify` and `dead-letter` to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    notify = command(
        sub,
        "notify",
        help="test notification actions and show what was sent",
        examples=[
            "sudo cortexctl notify test disk-critical.webhook",
            "cortexctl notify history --since 24h",
        ],
    )
    verbs = actions(notify, "notify_command")
    test = command(
        verbs,
        "test",
        help="send a test alert through one action (admin)",
        notes="Exit status 1 when the action did not deliver.",
        examples=["sudo cortexctl notify test disk-critical.webhook"],
    )
    test.add_argument("name", metavar="ACTION", help="the action's name (see `cortexctl status`)")
    test.set_defaults(run=_test)
    history = command(
        verbs,
        "history",
        help="notifications queued and held back",
        examples=[
            "cortexctl notify history --since 24h",
            "cortexctl notify history --action disk-critical.email --json",
        ],
    )
    history.add_argument("--since", type=duration, default=86400.0, metavar="AGE")
    history.add_argument("--action", help="only this action")
    history.add_argument("--limit", type=int, default=100)
    history.set_defaults(run=_history)

    dead = command(
        sub,
        "dead-letter",
        help="notifications that ran out of attempts: list, show, retry, purge",
        examples=[
            "cortexctl dead-letter list --queue disk-critical.email --since 7d",
            "sudo cortexctl dead-letter retry --all",
            "sudo cortexctl dead-letter purge --older-than 30d",
        ],
    )
    dl = actions(dead, "dead_letter_command")
    listing = command(
        dl,
        "list",
        help="list dead letters",
        examples=["cortexctl dead-letter list", "cortexctl dead-letter list --since 7d --json"],
    )
    listing.add_argument("--queue", metavar="ACTION", help="only this action")
    listing.add_argument("--since", type=duration, metavar="AGE", help="failed within AGE")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=_dl_list)
    show = command(
        dl, "show", help="show one dead letter", examples=["cortexctl dead-letter show 12"]
    )
    show.add_argument("id", type=int)
    show.set_defaults(run=_dl_show)
    retry = command(
        dl,
        "retry",
        help="queue dead letters again (admin)",
        examples=[
            "sudo cortexctl dead-letter retry 12",
            "sudo cortexctl dead-letter retry --all --since 24h",
        ],
    )
    retry.add_argument("id", type=int, nargs="?")
    retry.add_argument("--all", action="store_true", help="every dead letter")
    retry.add_argument("--since", type=duration, metavar="AGE", help="those failed within AGE")
    retry.add_argument("--queue", metavar="ACTION", help="only this action")
    retry.set_defaults(run=_dl_retry)
    purge = command(
        dl,
        "purge",
        help="delete old dead letters (admin)",
        examples=["sudo cortexctl dead-letter purge --older-than 30d"],
    )
    purge.add_argument(
        "--older-than", type=duration, metavar="AGE", help="default: the retention (30d)"
    )
    purge.set_defaults(run=_dl_purge)
