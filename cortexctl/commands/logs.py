"""`cortexctl logs`: tail [-f], errors, search, export — the journal through the daemon."""

from __future__ import annotations

import argparse
from typing import Any

from cortexctl.client import Client
from cortexctl.output import Output

EXIT_OK = 0
FOLLOW_TIMEOUT = 7 * 86400.0
LEVEL_COLOURS = {0: "1;31", 1: "1;31", 2: "1;31", 3: "31", 4: "33", 5: "1", 6: "0", 7: "2"}


def _params(args: argparse.Namespace, *keys: str) -> dict[str, Any]:
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


def _tail(client: Client, args: argparse.Namespace, out: Output) -> int:
    params = _params(args, "units", "level", "lines")
    if not args.follow:
        result = client.call("logs.tail", params)
        if out.as_json:
            out.json(result)
        else:
            _print(result["entries"], out)
        return EXIT_OK

    def show(data: Any) -> None:
        entries = data.get("entries", [])
        if out.as_json:
            for entry in entries:
                out.json(entry)
            out.stream.flush()
        else:
            _print(entries, out)

    params["follow"] = True
    client.call("logs.tail", params, on_stream=show, timeout=FOLLOW_TIMEOUT)
    return EXIT_OK


def _errors(client: Client, args: argparse.Namespace, out: Output) -> int:
    result = client.call("logs.errors", _params(args, "since", "units", "limit"))
    if out.as_json:
        out.json(result)
        return EXIT_OK
    if not result["entries"]:
        out.line(f"no errors in the journal since {args.since}")
        return EXIT_OK
    _print(result["entries"], out)
    out.line()
    counts = sorted(result["by_unit"].items(), key=lambda kv: -kv[1])
    out.line(f"{result['count']} errors: " + ", ".join(f"{unit} {n}" for unit, n in counts[:10]))
    return EXIT_OK


def _search(client: Client, args: argparse.Namespace, out: Output) -> int:
    params = _params(args, "pattern", "since", "units", "level", "limit")
    result = client.call("logs.search", params)
    if out.as_json:
        out.json(result)
    elif not result["entries"]:
        out.line(f"nothing matches {args.pattern!r} since {args.since}")
    else:
        _print(result["entries"], out)
    return EXIT_OK


def _export(client: Client, args: argparse.Namespace, out: Output) -> int:
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


def register(sub: Any) -> None:
    """Add `logs` and its actions to the top-level subparsers."""
    logs = sub.add_parser(
        "logs",
        help="read the systemd journal (admin, adm or systemd-journal)",
        epilog=(
            "examples:\n  cortexctl logs tail -f --unit ssh --level warning\n"
            "  cortexctl logs errors --since 1h\n"
            "  cortexctl logs search 'Failed password' --since 24h\n"
            "  cortexctl logs export --since 2026-11-20 --format jsonl > journal.jsonl\n"
            "times: durations (30m, 1h, 7d) or dates (2026-11-20, '2026-11-20 14:00')"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = logs.add_subparsers(dest="logs_command", metavar="ACTION", required=True)
    tail = actions.add_parser("tail", help="the newest entries; -f follows new ones")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    tail.add_argument("--level", "-p", help="this priority or worse (err, warning, info…)")
    tail.add_argument("-n", "--lines", type=int, help="how many entries (default 50)")
    _units(tail)
    tail.set_defaults(run=_tail)
    errors = actions.add_parser("errors", help="entries at priority err or worse")
    errors.add_argument("--since", default="1h", help="a duration (1h) or date (default 1h)")
    errors.add_argument("--limit", type=int, help="at most this many entries")
    _units(errors)
    errors.set_defaults(run=_errors)
    search = actions.add_parser("search", help="entries whose message matches a regex")
    search.add_argument("pattern", help="a regular expression (case-insensitive)")
    search.add_argument("--since", default="24h", help="a duration or date (default 24h)")
    search.add_argument("--level", "-p", help="this priority or worse")
    search.add_argument("--limit", type=int, help="at most this many entries")
    _units(search)
    search.set_defaults(run=_search)
    export = actions.add_parser("export", help="write entries as JSON lines to stdout")
    export.add_argument("--since", default="24h", help="a duration or date (default 24h)")
    export.add_argument("--format", default="jsonl", choices=("jsonl",))
    export.add_argument("--limit", type=int, help="at most this many entries")
    _units(export)
    export.set_defaults(run=_export)
