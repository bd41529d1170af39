"""`cortexctl alerts`: list, show, ack, resolve, clear, send, silence add|list|rm."""

from __future__ import annotations

import re
import time

from cortexctl.output import ago

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output

EXIT_OK = 0
SEVERITY_COLOURS = {"INFO": "36", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """`90`, `90s`, `15m`, `2h`, `1d` → seconds (argparse type)."""
    import argparse

    found = _DURATION.match(text)
    if not found or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 2h, 1d)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def label(text: str) -> tuple[str, str]:
    """`KEY=VALUE` → (key, value) (argparse type)."""
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _ago(ts: float | None) -> str:
    return ago(None if ts is None else time.time() - ts)


def _filters(args: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in ("severity", "category", "state", "limit"):
        value = getattr(args, key, None)
        if value is not None:
            params[key] = value
    if getattr(args, "since", None) is not None:
        params["since"] = time.time() - args.since
    if getattr(args, "include_cleared", False):
        params["include_cleared"] = True
    return params


def _list(client: Client, args: Any, out: Output) -> int:
    out.result(client.call("alerts.list", _filters(args) or None), lambda r: _show_list(out, r))
    return EXIT_OK


def _show_list(out: Output, result: dict[str, Any]) -> None:
    alerts = result["alerts"]
    if not alerts:
        out.line("no alerts")
    for a in alerts:
        severity = out.paint(f"{a['severity']:<8}", SEVERITY_COLOURS.get(a["severity"], "0"))
        marks = [m for m, on in (("silenced", a["silenced"]), ("flapping", a["flapping"])) if on]
        muted = f" ({', '.join(marks)})" if marks else ""
        out.line(
            f"{a['id'][:8]}  {severity} {a['state']:<12} {a['title']}{muted}"
            f"  seen {a['count']}x, last {_ago(a['last_seen'])}"
        )


def _show(client: Client, args: Any, out: Output) -> int:
    answer = client.call("alerts.get", {"id": args.id})
    alert = answer["alert"]
    # A background explanation, when one is stored, travels with the alert.
    if answer.get("explanation"):
        alert = {**alert, "explanation": answer["explanation"]}
    out.result(alert, lambda a: _show_alert(out, a))
    return EXIT_OK


def _show_alert(out: Output, alert: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [
        (key, alert[key])
        for key in ("id", "title", "severity", "state", "category", "source", "host", "count")
    ]
    rows += [("name", alert["name"]), ("key", alert["key"] or "-")]
    rows += [
        ("first seen", _ago(alert["first_seen"])),
        ("last seen", _ago(alert["last_seen"])),
        ("acknowledged", f"{_ago(alert['acknowledged_at'])} by {alert['acknowledged_by']}")
        if alert["acknowledged_at"]
        else ("acknowledged", "no"),
        ("resolved", _ago(alert["resolved_at"])),
        ("labels", ", ".join(f"{k}={v}" for k, v in alert["labels"].items()) or "-"),
        ("annotations", ", ".join(f"{k}={v}" for k, v in alert["annotations"].items()) or "-"),
        ("silenced", "yes" if alert["silenced"] else "no"),
        ("flapping", "yes" if alert["flapping"] else "no"),
    ]
    if alert["expires_at"] and alert["state"] != "resolved":
        rows.append(("resolves", f"on its own at {time.ctime(alert['expires_at'])}"))
    out.table(rows)
    if alert["description"]:
        out.line()
        out.line(alert["description"])
    explained = alert.get("explanation")
    if explained:
        made = time.ctime(explained["created"])
        mine = (
            ""
            if explained["alert_id"] == alert["id"]
            else f" (for alert {explained['alert_id'][:8]})"
        )
        out.line()
        out.line(f"Explained in the background at {made}{mine}:")
        out.line()
        out.write(str(explained["explanation"]["text"]))
        if explained["summary"]:
            out.line()
            out.line("Summary (local model; the facts above are what counts):")
            out.line(explained["summary"])


def _ack(client: Client, args: Any, out: Output) -> int:
    if args.all:
        params: dict[str, Any] = {"all": True}
        params.update({k: v for k, v in _filters(args).items() if k != "state"})
    elif args.id:
        params = {"id": args.id}
    else:
        params = {}  # the daemon answers INVALID_PARAMS: never everything by accident
    out.result(
        client.call("alerts.ack", params),
        lambda r: out.line(f"acknowledged {len(r['acknowledged'])} alert(s)"),
    )
    return EXIT_OK


def _resolve(client: Client, args: Any, out: Output) -> int:
    if args.key is not None:
        params: dict[str, Any] = {"key": args.key}
        if args.source:
            params["source"] = args.source
    else:
        # Neither an id nor a key: the daemon answers INVALID_PARAMS naming both.
        params = {"id": args.id} if args.id else {}
    alert = client.call("alerts.resolve", params)["alert"]
    out.result(alert, lambda a: out.line(f"alert {a['id']} is {a['state']}"))
    return EXIT_OK


def _clear(client: Client, args: Any, out: Output) -> int:
    out.result(
        client.call("alerts.clear"),
        lambda r: out.line(f"cleared {r['cleared']} acknowledged or resolved alert(s)"),
    )
    return EXIT_OK


def _send(client: Client, args: Any, out: Output) -> int:
    params: dict[str, Any] = {"title": args.message, "severity": args.level}
    if args.description:
        params["description"] = args.description
    if args.category:
        params["category"] = args.category
    if args.source:
        params["source"] = args.source
    if args.label:
        params["labels"] = dict(args.label)
    if args.key:
        params["key"] = args.key
    if args.name:
        params["name"] = args.name
    if args.ttl is not None:
        params["ttl_seconds"] = args.ttl
    out.result(
        client.call("alerts.raise", params)["alert"],
        lambda a: out.line(f"alert {a['id']} {a['state']} ({a['severity']}, seen {a['count']}x)"),
    )
    return EXIT_OK


def _silence_add(client: Client, args: Any, out: Output) -> int:
    params = {"matchers": args.matcher, "duration_seconds": args.duration, "comment": args.comment}
    out.result(
        client.call("alerts.silence", params)["silence"],
        lambda s: out.line(f"silence {s['id']} until {time.ctime(s['ends_at'])}"),
    )
    return EXIT_OK


def _silence_list(client: Client, args: Any, out: Output) -> int:
    result = client.call("silences.list", {"all": True} if args.all else None)
    out.result(result, lambda r: _show_silences(out, r))
    return EXIT_OK


def _show_silences(out: Output, result: dict[str, Any]) -> None:
    if not result["silences"]:
        out.line("no silences")
    for s in result["silences"]:
        state = "active" if s["active"] else "expired"
        out.line(
            f"{s['id']}  {state:<7} until {time.ctime(s['ends_at'])}  {' '.join(s['matchers'])}"
            + (f"  # {s['comment']}" if s["comment"] else "")
        )


def _silence_rm(client: Client, args: Any, out: Output) -> int:
    out.result(
        client.call("silences.delete", {"id": args.id}),
        lambda r: out.line(f"silence {r['deleted']} removed"),
    )
    return EXIT_OK


SEND_HELP = """\
Raise an alert, or update one already raised.

Which alert a send updates (its identity):
  with --key:    the source (--source, default external) and the key;
                 title, level, labels and description change in place.
  without --key: the source, the labels and the title; a different
                 title or label is a different alert.
The alertname (Alertmanager's, and what silences match as alertname) is
--name, else the title made label-safe (`Backup failed` -> backup_failed).
"""

SEND_NOTES = """\
The first two examples raise one alert and then update it by its key;
`sudo cortexctl alerts resolve --key backup-nightly` ends it. With --ttl the
alert is an event: it resolves on its own that long after the last send."""

SEND_EXAMPLES = [
    "sudo cortexctl alerts send --key backup-nightly --name backup_nightly"
    " --level warning -m 'nightly backup is late'",
    "sudo cortexctl alerts send --key backup-nightly --name backup_nightly"
    " --level error -m 'nightly backup failed: disk full'",
    "sudo cortexctl alerts send --level info --ttl 1h -m 'certificates renewed'",
    "sudo cortexctl alerts send -m 'disk replaced' --level info --label host=db1",
]


def _add_filters(parser: argparse.ArgumentParser, *, state: bool) -> None:
    parser.add_argument("--severity", help="INFO, WARNING, ERROR or CRITICAL")
    parser.add_argument("--category", help="e.g. disk_usage, service, security_update")
    parser.add_argument("--since", type=duration, metavar="AGE", help="seen within AGE (2h, 1d)")
    if state:
        parser.add_argument(
            "--state", choices=("firing", "acknowledged", "resolved", "active", "all")
        )
        parser.add_argument("--limit", type=int, help="at most this many (default 100)")
        parser.add_argument(
            "--include-cleared", action="store_true", help="also alerts moved out by `clear`"
        )


def register(sub: Any) -> None:
    """Add `alerts` and its actions to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    alerts = command(
        sub,
        "alerts",
        help="list and manage alerts",
        notes="Without an action, `alerts` lists the active alerts (as `alerts list`).",
        examples=[
            "cortexctl alerts",
            "cortexctl alerts list --severity CRITICAL",
            "sudo cortexctl alerts ack 1f2e3d4c",
            "sudo cortexctl alerts send --level critical --message 'backup failed'",
            "sudo cortexctl alerts silence add 'mountpoint=\"/srv\"' --for 2h --comment resize",
        ],
    )
    _add_filters(alerts, state=True)
    alerts.set_defaults(run=_list)
    verbs = actions(alerts, "alerts_command")
    verbs.required = False
    listing = command(
        verbs,
        "list",
        help="list alerts (active ones by default)",
        examples=[
            "cortexctl alerts list",
            "cortexctl alerts list --state all --since 1d",
            "cortexctl alerts list --category disk_usage --json",
        ],
    )
    _add_filters(listing, state=True)
    listing.set_defaults(run=_list)
    show = command(
        verbs,
        "show",
        help="show one alert",
        examples=["cortexctl alerts show 1f2e3d4c", "cortexctl alerts show 1f2e3d4c --json"],
    )
    show.add_argument("id", metavar="ALERT_ID", help="its id, or the first 8 characters")
    show.set_defaults(run=_show)
    ack = command(
        verbs,
        "ack",
        help="acknowledge an alert, or --all matching filters",
        examples=[
            "sudo cortexctl alerts ack 1f2e3d4c",
            "sudo cortexctl alerts ack --all --severity WARNING",
        ],
    )
    ack.add_argument("id", nargs="?", metavar="ALERT_ID", help="its id, or the first 8 characters")
    ack.add_argument("--all", action="store_true", help="every firing alert matching filters")
    _add_filters(ack, state=False)
    ack.set_defaults(run=_ack)
    resolve = command(
        verbs,
        "resolve",
        help="resolve an alert by hand (by id, or by the key it was sent with)",
        examples=[
            "sudo cortexctl alerts resolve 1f2e3d4c",
            "sudo cortexctl alerts resolve --key backup-nightly",
        ],
    )
    resolve.add_argument(
        "id", nargs="?", metavar="ALERT_ID", help="its id, or the first 8 characters"
    )
    resolve.add_argument("--key", help="the key the alert was sent with")
    resolve.add_argument("--source", help="the source it was sent with (default external)")
    resolve.set_defaults(run=_resolve)
    command(
        verbs,
        "clear",
        help="move acknowledged and resolved alerts out of the list",
        examples=["sudo cortexctl alerts clear"],
    ).set_defaults(run=_clear)
    send = command(
        verbs,
        "send",
        help="raise an alert from a script",
        description=SEND_HELP,
        notes=SEND_NOTES,
        examples=SEND_EXAMPLES,
    )
    send.add_argument("--message", "-m", required=True, help="the alert's title")
    send.add_argument("--level", default="warning", help="info, warning, error or critical")
    send.add_argument("--description", help="longer text")
    send.add_argument("--category", help="alert category (default system)")
    send.add_argument("--source", help="who raises it (default external)")
    send.add_argument("--label", type=label, action="append", metavar="KEY=VALUE")
    send.add_argument(
        "--key", help="the alert's identity: sending the same key again updates that alert"
    )
    send.add_argument(
        "--name", help="the alertname (lower-case letters, digits, _); default: from the title"
    )
    send.add_argument(
        "--ttl",
        type=duration,
        metavar="DURATION",
        help="resolve on its own this long after the last send (an event: 30m, 1d)",
    )
    send.set_defaults(run=_send)
    silence = command(
        verbs,
        "silence",
        help="manage silences",
        examples=[
            "sudo cortexctl alerts silence add 'unit=\"nginx.service\"' --for 1h",
            "cortexctl alerts silence list --all",
        ],
    )
    silence_actions = actions(silence, "silence_command")
    add = command(
        silence_actions,
        "add",
        help="silence alerts matching label matchers",
        notes="Matchers are Alertmanager's: =, !=, =~ and !~ on a label.",
        examples=[
            "sudo cortexctl alerts silence add 'unit=\"nginx.service\"' --for 1h",
            "sudo cortexctl alerts silence add 'severity!~\"info\"' --for 30m --comment deploy",
        ],
    )
    add.add_argument("matcher", nargs="+", help='e.g. unit="nginx.service" or severity!~"info"')
    add.add_argument("--for", dest="duration", type=duration, required=True, metavar="DURATION")
    add.add_argument("--comment", default="")
    add.set_defaults(run=_silence_add)
    slist = command(
        silence_actions,
        "list",
        help="list silences",
        examples=["cortexctl alerts silence list", "cortexctl alerts silence list --all --json"],
    )
    slist.add_argument("--all", action="store_true", help="include expired ones")
    slist.set_defaults(run=_silence_list)
    rm = command(
        silence_actions,
        "rm",
        help="remove a silence",
        examples=["sudo cortexctl alerts silence rm 3c1d2e4f"],
    )
    rm.add_argument("id", metavar="SILENCE_ID")
    rm.set_defaults(run=_silence_rm)
