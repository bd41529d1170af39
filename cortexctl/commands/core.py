"""Core commands: ping, version, status, config show|reload, shutdown."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from cortexctl.client import Client
from cortexctl.output import Output

EXIT_OK = 0


def _ping(client: Client, args: argparse.Namespace, out: Output) -> int:
    started = time.perf_counter()
    result = client.call("ping")
    elapsed_ms = (time.perf_counter() - started) * 1000
    if out.as_json:
        out.json({**result, "rtt_ms": round(elapsed_ms, 3)})
    else:
        out.line(f"pong from {client.path} in {elapsed_ms:.2f} ms")
    return EXIT_OK


def _version(client: Client, args: argparse.Namespace, out: Output) -> int:
    result = client.call("version")
    if out.as_json:
        out.json(result)
    else:
        out.line(f"cortexd {result['version']} (protocol JSON-RPC {result['protocol']})")
    return EXIT_OK


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _status(client: Client, args: argparse.Namespace, out: Output) -> int:
    result = client.call("status")
    if out.as_json:
        out.json(result)
        return EXIT_OK
    server = result["server"]
    out.line(out.paint("cortexd is running", "32"))
    out.table(
        [
            ("version", result["version"]),
            ("pid", result["pid"]),
            ("uptime", _duration(result["uptime_seconds"])),
            ("socket", result["components"]["server"]["socket"]),
            ("config", ", ".join(result["config_sources"]) or "built-in defaults"),
            ("connections", server["connections_open"]),
            ("requests", f"{server['requests_total']} ({server['errors_total']} errors)"),
        ]
    )
    if result.get("restart_required"):
        out.line(out.paint("restart needed for: " + ", ".join(result["restart_required"]), "33"))
    out.line()
    out.line("components:")
    for name, state in result["components"].items():
        label = state.get("state", "?")
        colour = "32" if label in ("running", "ready") else "33"
        out.line(f"  {name:<12} {out.paint(label, colour)}{_why(state)}")
    return EXIT_OK


def _why(state: dict[str, Any]) -> str:
    """What is wrong with a component, in a few words after its state ("" when nothing)."""
    storage = state.get("storage") or {}
    reason = state.get("reason") or (
        f"{storage['file']}: {storage['reason']}" if storage.get("reason") else ""
    )
    moved = len(storage.get("quarantined") or [])
    if moved:
        reason = "; ".join(filter(None, [reason, f"{moved} damaged database moved aside"]))
    return f" ({reason})" if reason else ""


def _config_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    params = {"section": args.section} if args.section else None
    result = client.call("config.get", params)
    if out.as_json:
        out.json(result)
        return EXIT_OK
    _print_tree(out, result["config"], 0)
    out.line()
    out.line("sources: " + (", ".join(result["sources"]) or "built-in defaults"))
    for warning in result["warnings"]:
        out.line(out.paint(f"warning: {warning}", "33"))
    return EXIT_OK


def _print_tree(out: Output, value: dict[str, Any], depth: int) -> None:
    for key, item in value.items():
        if isinstance(item, dict):
            out.line(f"{'  ' * depth}{key}:")
            _print_tree(out, item, depth + 1)
        else:
            out.line(f"{'  ' * depth}{key}: {json.dumps(item, ensure_ascii=False)}")


def _config_reload(client: Client, args: argparse.Namespace, out: Output) -> int:
    result = client.call("config.reload")
    if out.as_json:
        out.json(result)
        return EXIT_OK
    out.line("configuration reloaded from " + (", ".join(result["sources"]) or "defaults"))
    for warning in result["warnings"]:
        out.line(out.paint(f"warning: {warning}", "33"))
    if result["restart_required"]:
        out.line("restart needed for: " + ", ".join(result["restart_required"]))
    return EXIT_OK


def _shutdown(client: Client, args: argparse.Namespace, out: Output) -> int:
    result = client.call("shutdown")
    if out.as_json:
        out.json(result)
    else:
        out.line("cortexd is shutting down")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add this module's commands to the top-level subparsers."""
    sub.add_parser("ping", help="check that the daemon answers").set_defaults(run=_ping)
    sub.add_parser("version", help="show the daemon's version").set_defaults(run=_version)
    sub.add_parser("status", help="show the daemon's status").set_defaults(run=_status)
    config = sub.add_parser("config", help="show or reload the configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the running config (secrets redacted)")
    show.add_argument("section", nargs="?", help="only this section")
    show.set_defaults(run=_config_show)
    config_sub.add_parser("reload", help="re-read the config files").set_defaults(
        run=_config_reload
    )
    sub.add_parser("shutdown", help="stop the daemon gracefully").set_defaults(run=_shutdown)
