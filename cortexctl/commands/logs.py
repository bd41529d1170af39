"""`cortexctl logs`: tail [-f], errors, search, export — the journal through the daemon.

`logs tail -f --json` and `logs export` print one journal entry per line (as
`journalctl -o json` does), as they arrive.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output

EXIT_OK = 0
FOLLOW_TIMEOUT = 7 * 86400.0
LEVEL_COLOURS = {0: "1;31", 1: "1;31", 2: "1;31", 3: "31", 4: "33", 5: "1", 6: "0", 7: "2"}


def _params(args: Any, *keys: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in keys:
        value = getattr(args, key, None)
        if value is not None and value != []:
            params[key] = value
    return params


def _print(entries: list[dict[str, Any]], out: Output) -> None:
    for e in entries:
        source = e["unit"] or e["identifier"] or "-"
        pid = f"[{e['pid']}]" if e["pid"] else ""
        text = f"{e['time'][:23]} {source}{pid} {e['level']}: {e['message']}"
        out.line(out.paint(text, LEVEL_COLOURS.get(e["priority"], "0")))
    out.stream.flush()


def _tail(client: Client, args: Any, out: Output) -> int:
    params = _params(args, "units", "level", "lines")
    if not args.follow:
        out.result(client.call("logs.tail", params), lambda r: _print(r["entries"], out))
        return EXIT_OK

    def show(data: Any) -> None:
        entries = data.get("entries", [])
        if out.as_json:
            for entry in entries:
                out.json_line(entry)
        else:
            _print(entries, out)

    params["follow"] = True
    client.call("logs.tail", params, on_stream=show, timeout=FOLLOW_TIMEOUT)
    return EXIT_OK


def _errors(client: Client, args: Any, out: Output) -> int:
    result = client.call("logs.errors", _params(args, "since", "units", "limit"))
    out.result(result, lambda r: _show_errors(out, r, args.since))
    return EXIT_OK


def _show_errors(out: Output, result: dict[str, Any], since: str) -> None:
    if not result["entries"]:
        out.line(f"no errors in the journal since {since}")
        return
    _print(result["entries"], out)
    out.line()
    counts = sorted(result["by_unit"].items(), key=lambda kv: -kv[1])
    out.line(f"{result['count']} errors: " + ", ".join(f"{unit} {n}" for unit, n in counts[:10]))


def _search(client: Client, args: Any, out: Output) -> int:
    params = _params(args, "pattern", "since", "units", "level", "limit")
    result = client.call("logs.search", params)
    out.result(
        result,
        lambda r: (
            _print(r["entries"], out)
            if r["entries"]
            else out.line(f"nothing matches {args.pattern!r} since {args.since}")
        ),
    )
    return EXIT_OK


def _export(client: Client, args: Any, out: Output) -> int:
    def write(data: Any) -> None:
        out.stream.write(data.get("jsonl", ""))

    params = _params(args, "since", "format", "units", "limit")
    client.call("logs.export", params, on_stream=write, timeout=max(args.timeout, 600.0))
    out.stream.flush()
    return EXIT_OK


def _units(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unit",
        "-u",
        dest="units",
        action="append",
        default=[],
        metavar="UNIT",
        help="only this unit or syslog identifier (repeatable)",
    )


TIMES = "times: durations (30m, 1h, 7d) or dates (2026-11-20, '2026-11-20 14:00')"


def register(sub: Any) -> None:
    """Add `logs` and its actions to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    logs = command(
        sub,
        "logs",
        help="read the systemd journal (admin, adm or systemd-journal)",
        notes=TIMES,
        examples=[
            "cortexctl logs tail -f --unit ssh --level warning",
            "cortexctl logs errors --since 1h",
            "cortexctl logs search 'Failed password' --since 24h",
            "cortexctl logs export --since 2026-11-20 --format jsonl > journal.jsonl",
        ],
    )
    verbs = actions(logs, "logs_command")
    tail = command(
        verbs,
        "tail",
        help="the newest entries; -f follows new ones",
        notes="With -f and --json, one entry per line as it arrives.",
        examples=["cortexctl logs tail -n 20", "cortexctl logs tail -f --unit cortexd --json"],
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    tail.add_argument("--level", "-p", help="this priority or worse (err, warning, info…)")
    tail.add_argument("-n", "--lines", type=int, help="how many entries (default 50)")
    _units(tail)
    tail.set_defaults(run=_tail)
    errors = command(
        verbs,
        "errors",
        help="entries at priority err or worse",
        notes=TIMES,
        examples=["cortexctl logs errors --since 1h", "cortexctl logs errors -u nginx --since 1d"],
    )
    errors.add_argument("--since", default="1h", help="a duration (1h) or date (default 1h)")
    errors.add_argument("--limit", type=int, help="at most this many entries")
    _units(errors)
    errors.set_defaults(run=_errors)
    search = command(
        verbs,
        "search",
        help="entries whose message matches a regex",
        notes=TIMES,
        examples=[
            "cortexctl logs search 'Failed password' --since 24h",
            "cortexctl logs search 'oom|killed' -u kernel --json",
        ],
    )
    search.add_argument("pattern", help="a regular expression (case-insensitive)")
    search.add_argument("--since", default="24h", help="a duration or date (default 24h)")
    search.add_argument("--level", "-p", help="this priority or worse")
    search.add_argument("--limit", type=int, help="at most this many entries")
    _units(search)
    search.set_defaults(run=_search)
    export = command(
        verbs,
        "export",
        help="write entries as JSON lines to stdout",
        notes=TIMES,
        examples=["cortexctl logs export --since 24h --format jsonl > journal.jsonl"],
    )
    export.add_argument("--since", default="24h", help="a duration or date (default 24h)")
    export.add_argument("--format", default="jsonl", choices=("jsonl",))
    export.add_argument("--limit", type=int, help="at most this many entries")
    _units(export)
    export.set_defaults(run=_export)
