"""Core commands: ping, version, status, config show|reload, shutdown."""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output

EXIT_OK = 0


def _ping(client: Client, args: Any, out: Output) -> int:
    started = time.perf_counter()
    result = client.call("ping")
    elapsed_ms = (time.perf_counter() - started) * 1000
    out.result(
        {**result, "rtt_ms": round(elapsed_ms, 3)},
        lambda _: out.line(f"pong from {client.path} in {elapsed_ms:.2f} ms"),
    )
    return EXIT_OK


def _version(client: Client, args: Any, out: Output) -> int:
    out.result(
        client.call("version"),
        lambda r: out.line(f"cortexd {r['version']} (protocol JSON-RPC {r['protocol']})"),
    )
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


def _status(client: Client, args: Any, out: Output) -> int:
    out.result(client.call("status"), lambda result: _show_status(out, result))
    return EXIT_OK


def _show_status(out: Output, result: dict[str, Any]) -> None:
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


def _config_show(client: Client, args: Any, out: Output) -> int:
    params = {"section": args.section} if args.section else None
    out.result(client.call("config.get", params), lambda result: _show_config(out, result))
    return EXIT_OK


def _show_config(out: Output, result: dict[str, Any]) -> None:
    _print_tree(out, result["config"], 0)
    out.line()
    out.line("sources: " + (", ".join(result["sources"]) or "built-in defaults"))
    for warning in result["warnings"]:
        out.line(out.paint(f"warning: {warning}", "33"))


def _print_tree(out: Output, value: dict[str, Any], depth: int) -> None:
    import json

    for key, item in value.items():
        if isinstance(item, dict):
            out.line(f"{'  ' * depth}{key}:")
            _print_tree(out, item, depth + 1)
        else:
            out.line(f"{'  ' * depth}{key}: {json.dumps(item, ensure_ascii=False)}")


def _config_reload(client: Client, args: Any, out: Output) -> int:
    out.result(client.call("config.reload"), lambda result: _show_reload(out, result))
    return EXIT_OK


def _show_reload(out: Output, result: dict[str, Any]) -> None:
    out.line("configuration reloaded from " + (", ".join(result["sources"]) or "defaults"))
    for warning in result["warnings"]:
        out.line(out.paint(f"warning: {warning}", "33"))
    if result["restart_required"]:
        out.line("restart needed for: " + ", ".join(result["restart_required"]))


def _shutdown(client: Client, args: Any, out: Output) -> int:
    out.result(client.call("shutdown"), lambda _: out.line("cortexd is shutting down"))
    return EXIT_OK


# Commands without options of their own; the command line runs them without
# building a parser (see cortexctl.cli.FAST_COMMANDS).
SIMPLE_COMMANDS = {"ping": _ping, "version": _version, "status": _status}


def register(sub: Any) -> None:
    """Add this module's commands to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    command(
        sub,
        "ping",
        help="check that the daemon answers",
        examples=["cortexctl ping", "cortexctl ping --json"],
    ).set_defaults(run=_ping)
    command(
        sub,
        "version",
        help="show the daemon's version",
        examples=["cortexctl version", "cortexctl version --json"],
    ).set_defaults(run=_version)
    command(
        sub,
        "status",
        help="show the daemon's status",
        examples=["cortexctl status", "cortexctl status --json | jq .server"],
    ).set_defaults(run=_status)
    config = command(
        sub,
        "config",
        help="show or reload the configuration",
        examples=["cortexctl config show", "sudo cortexctl config reload"],
    )
    config_sub = actions(config, "config_command")
    show = command(
        config_sub,
        "show",
        help="print the running config (secrets redacted)",
        examples=["cortexctl config show", "cortexctl config show server --json"],
    )
    show.add_argument("section", nargs="?", help="only this section")
    show.set_defaults(run=_config_show)
    command(
        config_sub,
        "reload",
        help="re-read the config files (admin)",
        examples=["sudo cortexctl config reload"],
        notes="The same as `systemctl reload cortexd` (SIGHUP), with the outcome printed.",
    ).set_defaults(run=_config_reload)
    command(
        sub,
        "shutdown",
        help="stop the daemon gracefully (admin)",
        examples=["sudo cortexctl shutdown"],
        notes="Under systemd the socket unit starts it again on the next connection.",
    ).set_defaults(run=_shutdown)
