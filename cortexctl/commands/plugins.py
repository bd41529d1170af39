"""`cortexctl plugins list [--available] | enable | disable | reload | call | create`.

`create NAME --type T` needs no daemon: it writes a working plugin (manifest,
module, tests) into a directory (default: the current one) to edit and then
install under /etc/cortex/plugins.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from cortexctl.client import Client
from cortexctl.output import Output

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
RELOAD_WAIT = 130.0
STATUS_COLOURS = {"loaded": "32", "failed": "31", "disabled": "2", "unsupported": "33"}
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
TYPES = ("check", "command", "notifier")


def _show(out: Output, result: dict[str, Any], available: bool) -> None:
    plugins = result["plugins"]
    shown = plugins if available else [p for p in plugins if p["status"] == "loaded"]
    if not shown:
        out.line(f"no plugins {'found' if available else 'loaded'} in {result['directory']}")
    for p in shown:
        status = out.paint(f"{p['status']:<11}", STATUS_COLOURS.get(p["status"], "0"))
        kind = p.get("plugin_type", "?")
        version = p.get("version", "?")
        out.line(f"{status} {p['name']:<20} {version:<8} {kind:<8} {p.get('description', '')}")
        if p["error"]:
            out.line(f"            {p['error']}")
        if p["check_id"]:
            out.line(f"            check: {p['check_id']}")
        for command in p["commands"]:
            out.line(f"            method: {command}")
    hidden = len(plugins) - len(shown)
    if hidden:
        out.line(f"({hidden} more not loaded; --available shows them)")


def _list(client: Client, args: argparse.Namespace, out: Output) -> int:
    result = client.call("plugins.list")
    if out.as_json:
        out.json(result)
    else:
        _show(out, result, args.available)
    return EXIT_OK


def _change(method: str) -> Any:
    def run(client: Client, args: argparse.Namespace, out: Output) -> int:
        params = {"name": args.name} if method != "plugins.reload" else None
        result = client.call(method, params, timeout=RELOAD_WAIT)
        if out.as_json:
            out.json(result)
        else:
            _show(out, result, True)
        return EXIT_OK

    return run


def _call(client: Client, args: argparse.Namespace, out: Output) -> int:
    params: dict[str, Any] = {}
    for pair in args.params:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"cortexctl: expected KEY=VALUE, got {pair!r}", file=sys.stderr)
            return EXIT_USAGE
        params[key] = value
    result = client.call(f"plugin.{args.name}.{args.command}", {"params": params})
    out.json(result["result"]) if out.as_json else out.line(str(result["result"]))
    return EXIT_OK


MANIFEST = """\
name: {name}
version: 0.1.0
description: {description}
author: {author}
plugin_type: {kind}
main: __init__.py
cortex_version: ">=0.1.0"
interval_seconds: 60
settings:
  threshold: 10
"""

CHECK_CODE = '''\
"""{name}: a Cortex check plugin.

`check(settings)` runs in a worker process the daemon kills at its timeout;
`settings` is the mapping in plugin.yaml. Return a finding (or a list of
them): status PASS, WARN, FAIL or SKIP, a message, optional details.
"""

from __future__ import annotations

import os
from typing import Any


def check(settings: dict[str, Any]) -> dict[str, Any]:
    """WARN when the 1-minute load is above `threshold`."""
    load = os.getloadavg()[0]
    threshold = float(settings.get("threshold", 10))
    status = "WARN" if load > threshold else "PASS"
    return {{
        "status": status,
        "message": f"load {{load:.2f}} (threshold {{threshold:g}})",
        "details": {{"load_1": load, "threshold": threshold}},
    }}
'''

COMMAND_CODE = '''\
"""{name}: a Cortex command plugin.

Each entry of COMMANDS becomes the socket method `plugin.{name}.<command>`
(admin only); `cortexctl plugins call {name} <command> KEY=VALUE...` calls it.
It runs in a worker process the daemon kills at its timeout.
"""

from __future__ import annotations

from typing import Any


def hello(params: dict[str, Any]) -> dict[str, Any]:
    """Greet someone."""
    return {{"greeting": f"Hello, {{params.get('name', 'World')}}!"}}


COMMANDS = {{"hello": hello}}
'''

NOTIFIER_CODE = '''\
"""{name}: a Cortex notifier plugin.

It adds the action type `{name}` (plugin.yaml `action_type`) to the alert
rules (/etc/cortex/alerts.yaml):

    alerts:
      - name: everything
        actions:
          - type: {name}
            path: /var/log/cortex-alerts.jsonl

`send(event, options)` runs in a worker process the daemon kills at the
plugin timeout; `options` are the action's keys from the rules file (those
plugin.yaml `action_options` declares). Return normally on success (the
value is recorded as the answer); raise to fail the attempt, which is then
retried with backoff and finally dead-lettered with your error.
"""

from __future__ import annotations

import json
from typing import Any


def send(event: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Append the event as one JSON line to the file `options["path"]`."""
    alert = event["alert"]
    line = {{
        "kind": event["kind"],
        "severity": alert["severity"],
        "title": alert["title"],
        "host": alert.get("host"),
        "notification_id": event.get("notification_id"),
    }}
    with open(options["path"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\\n")
    return {{"written": options["path"]}}
'''

TEST_CHECK = '''\
"""Tests of the {name} plugin: run with `python -m pytest` in this directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent.parent


def load():
    spec = importlib.util.spec_from_file_location("{module}", HERE / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_names_this_plugin() -> None:
    manifest = yaml.safe_load((HERE / "plugin.yaml").read_text())
    assert manifest["name"] == "{name}"
    assert manifest["plugin_type"] == "{kind}"
    assert (HERE / manifest["main"]).is_file()


{body}
'''

CHECK_TESTS = '''\
def test_check_passes_under_a_high_threshold() -> None:
    result = load().check({"threshold": 1e9})
    assert result["status"] == "PASS"
    assert "load" in result["message"]


def test_check_warns_under_a_negative_threshold() -> None:
    assert load().check({"threshold": -1})["status"] == "WARN"'''

COMMAND_TESTS = """\
def test_hello_greets_by_name() -> None:
    assert load().COMMANDS["hello"]({"name": "Ops"}) == {"greeting": "Hello, Ops!"}


def test_hello_has_a_default() -> None:
    assert load().COMMANDS["hello"]({}) == {"greeting": "Hello, World!"}"""

NOTIFIER_TESTS = """\
import json

import pytest

EVENT = {
    "kind": "firing",
    "alert": {"severity": "ERROR", "title": "disk full", "host": "web1"},
    "notification_id": 7,
}


def test_send_appends_the_event(tmp_path) -> None:
    target = tmp_path / "alerts.jsonl"
    assert load().send(EVENT, {"path": str(target)}) == {"written": str(target)}
    load().send(EVENT, {"path": str(target)})
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["title"] == "disk full" and lines[0]["notification_id"] == 7


def test_send_fails_when_it_cannot_write(tmp_path) -> None:
    with pytest.raises(OSError):
        load().send(EVENT, {"path": str(tmp_path / "missing" / "alerts.jsonl")})"""

NOTIFIER_MANIFEST = """\
action_type: {name}
action_options:
  path: required
"""


def scaffold(directory: str, name: str, kind: str, author: str) -> list[str]:
    """Write plugin `name` of `kind` under `directory`; returns the files written.

    Raises:
        FileExistsError: the plugin directory exists already.
    """
    root = os.path.join(directory, name)
    os.makedirs(os.path.join(root, "tests"))
    code = {"check": CHECK_CODE, "command": COMMAND_CODE, "notifier": NOTIFIER_CODE}[kind]
    body = {"check": CHECK_TESTS, "command": COMMAND_TESTS, "notifier": NOTIFIER_TESTS}[kind]
    files = {
        "plugin.yaml": MANIFEST.format(
            name=name, description=f"the {name} {kind} plugin", author=author, kind=kind
        )
        + (NOTIFIER_MANIFEST.format(name=name) if kind == "notifier" else ""),
        "__init__.py": code.format(name=name),
        os.path.join("tests", "test_plugin.py"): TEST_CHECK.format(
            name=name, kind=kind, module=name.replace("-", "_"), body=body
        ),
    }
    written = []
    for rel, text in files.items():
        path = os.path.join(root, rel)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o644)
        written.append(path)
    os.chmod(root, 0o755)
    return written


def _create(client: Client | None, args: argparse.Namespace, out: Output) -> int:
    if not NAME.match(args.name):
        print("cortexctl: a plugin name is lower-case letters, digits, - or _", file=sys.stderr)
        return EXIT_USAGE
    try:
        files = scaffold(args.directory, args.name, args.type, args.author)
    except FileExistsError:
        target = os.path.join(args.directory, args.name)
        print(f"cortexctl: {target} exists already", file=sys.stderr)
        return EXIT_FAILED
    if out.as_json:
        out.json({"files": files})
        return EXIT_OK
    for path in files:
        out.line(f"created {path}")
    root = os.path.join(args.directory, args.name)
    out.line(f"test it:    (cd {root} && python3 -m pytest -q tests)")
    out.line(f"install it: sudo cp -r {root} /etc/cortex/plugins/ && sudo cortexctl plugins reload")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add `plugins` to the top-level subparsers."""
    plugins = sub.add_parser(
        "plugins",
        help="list, enable, disable, reload, call or create plugins",
        description="Manage plugins in the daemon's plugin directory.",
        epilog=(
            "examples:\n  cortexctl plugins list --available\n"
            "  sudo cortexctl plugins reload\n  sudo cortexctl plugins disable port_check\n"
            "  sudo cortexctl plugins call greeter hello name=ops\n"
            "  cortexctl plugins create my-check --type check"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND", required=True)
    listing = kinds.add_parser("list", help="loaded plugins (--available: every one found)")
    listing.add_argument("--available", action="store_true", help="also failed and disabled")
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    listing.set_defaults(run=_list)
    for verb in ("enable", "disable"):
        p = kinds.add_parser(verb, help=f"{verb} a plugin (admin; reloads)")
        p.add_argument("name")
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        p.set_defaults(run=_change(f"plugins.{verb}"))
    reload = kinds.add_parser("reload", help="load the plugin directory again (admin)")
    reload.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    reload.set_defaults(run=_change("plugins.reload"))
    call = kinds.add_parser("call", help="run a command plugin's command (admin)")
    call.add_argument("name")
    call.add_argument("command")
    call.add_argument("params", nargs="*", metavar="KEY=VALUE")
    call.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    call.set_defaults(run=_call)
    create = kinds.add_parser("create", help="scaffold a working plugin with its tests")
    create.add_argument("name")
    create.add_argument("--type", choices=TYPES, default="check", help="plugin type")
    create.add_argument("--directory", "-d", default=".", help="where to create it")
    create.add_argument("--author", default=os.environ.get("USER", "unknown"))
    create.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    create.set_defaults(run=_create, offline=True)
