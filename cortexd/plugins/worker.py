"""The process plugin code runs in: `python -I worker.py` (standard library only).

It reads one JSON request on stdin — the plugin's main file, an operation
(`describe`, `check`, `command`, `hook`, `send`) and its arguments — imports the
plugin, runs the operation and writes one JSON answer on stdout. What the
plugin itself prints goes to stderr, so it cannot corrupt the answer. The
daemon kills this process (its whole group) at the plugin's timeout, so a
hang is cut off instead of leaving an abandoned thread in the daemon.

Plugin module API:
    check(settings) -> {"status": "PASS|WARN|FAIL|SKIP", "message": str, "details": {}}
                       (or a list of those)
    COMMANDS = {"name": function(params) -> JSON value}
    HOOKS = {"post_check": function(payload) -> value}  (pre_fix: False or a reason vetoes)
    HOOK_PRIORITIES = {"post_check": 10}
    send(event, options) -> any JSON value  (notifier plugins; raise to fail the attempt)
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import traceback
from typing import Any


def _load(path: str) -> Any:
    name = "cortex_plugin_" + os.path.basename(os.path.dirname(path)).replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _describe(module: Any) -> dict[str, Any]:
    commands = getattr(module, "COMMANDS", {}) or {}
    hooks = getattr(module, "HOOKS", {}) or {}
    priorities = getattr(module, "HOOK_PRIORITIES", {}) or {}
    return {
        "check": callable(getattr(module, "check", None)),
        "send": callable(getattr(module, "send", None)),
        "commands": sorted(str(k) for k, v in commands.items() if callable(v)),
        "hooks": {str(k): int(priorities.get(k, 0)) for k, v in hooks.items() if callable(v)},
    }


def _run(request: dict[str, Any]) -> Any:
    module = _load(request["main"])
    op, args = request["op"], request.get("args") or {}
    if op == "describe":
        return _describe(module)
    if op == "check":
        return module.check(args.get("settings") or {})
    if op == "command":
        return module.COMMANDS[args["command"]](args.get("params") or {})
    if op == "send":
        return module.send(args.get("event") or {}, args.get("options") or {})
    if op == "hook":
        return module.HOOKS[args["hook"]](args.get("payload") or {})
    raise ValueError(f"unknown operation {op!r}")


def main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # the plugin's prints must not mix with the answer
    request = json.loads(sys.stdin.read())
    os.chdir(os.path.dirname(request["main"]) or "/")
    try:
        answer = {"ok": True, "result": _run(request)}
    except BaseException as exc:  # the plugin's failure is the answer, never a crash here
        answer = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8)[-4000:],
        }
    try:
        text = json.dumps(answer, default=str)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"ok": False, "error": f"the answer is not JSON: {exc}"})
    out.write(text)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
