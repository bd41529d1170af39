"""`cortexctl healing log`: the self-healing state and its log."""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output

EXIT_OK = 0
RESULT_COLOURS = {"success": "32", "failed": "31", "given_up": "1;31"}


def _log(client: Client, args: Any, out: Output) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.unit:
        params["unit"] = args.unit
    out.result(client.call("healing.list", params), lambda r: _show(out, r))
    return EXIT_OK


def _show(out: Output, result: dict[str, Any]) -> None:
    state = result["state"]
    line = f"self-healing: {state.upper() if state == 'unavailable' else state}"
    if result["reason"]:
        line += f" ({result['reason']})"
    out.line(line)
    if result["given_up"]:
        out.line(out.paint(f"given up: {', '.join(result['given_up'])}", "31"))
    if not result["entries"]:
        out.line("no healing attempts recorded")
    for e in result["entries"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        res = out.paint(f"{e['result']:<8}", RESULT_COLOURS.get(e["result"], "0"))
        out.line(
            f"{when}  {e['unit']:<28} {e['action']:<8} {res} #{e['attempt']} "
            f"{e['duration_ms'] / 1000:.1f}s  {e['message']}"
        )


def register(sub: Any) -> None:
    """Add `healing` to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    healing = command(
        sub,
        "healing",
        help="self-healing of failed units: state and log",
        description="Show the self-healing state and its log (newest first).",
        examples=["cortexctl healing log", "cortexctl healing log --unit nginx --json"],
    )
    kinds = actions(healing, "healing_command", "COMMAND")
    log = command(
        kinds,
        "log",
        help="the healing log: restarts and their results",
        examples=["cortexctl healing log --limit 10", "cortexctl healing log --unit nginx --json"],
    )
    log.add_argument("--unit", metavar="U", help="only this unit")
    log.add_argument("--limit", type=int, default=50, help="most entries (default 50)")
    log.set_defaults(run=_log)
