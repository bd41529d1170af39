"""`cortexctl plugins list [--available] | enable | disable | reload | call | create`.

`create NAME --type T` writes a working plugin (manifest, module, tests)
into the daemon's plugin directory (`plugins.directory`: asked of the
daemon, or read from the config files when it does not answer) or into
`--directory`. `list --available` shows the directory as it is now, also
plugins not loaded yet.
"""

from __future__ import annotations

import os
import re

from cortexctl.client import Client, DaemonUnreachable
from cortexctl.errors import LocalFileError, UsageError
from cortexd.protocol import CortexError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cortexctl.output import Output

EXIT_OK = 0
RELOAD_WAIT = 130.0
STATUS_COLOURS = {
    "loaded": "32",
    "failed": "31",
    "disabled": "2",
    "unsupported": "33",
    "found": "36",
    "removed": "33",
}
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
TYPES = ("check", "command", "notifier")
PROGRESS_LABELS = {
    "plugins.enable": "enabling the plugin",
    "plugins.disable": "disabling the plugin",
    "plugins.reload": "reloading plugins",
}
ASK_TIMEOUT = 5.0
# Where the daemon reads its configuration and the plugin directory it
# defaults to (cortexd.config: SYSTEM_CONFIG, USER_CONFIG, plugins.directory).
SYSTEM_CONFIG = "/etc/cortex/daemon.conf"
USER_CONFIG = "~/.cortex/daemon.conf"
DEFAULT_PLUGIN_DIR = "/etc/cortex/plugins"


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
    if available and any(p["status"] in ("found", "removed") for p in shown):
        out.line("(found and removed ones change at the next `sudo cortexctl plugins reload`)")


def _list(client: Client, args: Any, out: Output) -> int:
    result = client.call("plugins.list", {"scan": True} if args.available else None)
    out.result(result, lambda r: _show(out, r, args.available))
    return EXIT_OK


def _change(method: str) -> Any:
    def run(client: Client, args: Any, out: Output) -> int:
        params = {"name": args.name} if method != "plugins.reload" else None
        with out.progress(PROGRESS_LABELS[method]):
            result = client.call(method, params, timeout=RELOAD_WAIT)
        out.result(result, lambda r: _show(out, r, True))
        return EXIT_OK

    return run


def _call(client: Client, args: Any, out: Output) -> int:
    params: dict[str, Any] = {}
    for pair in args.params:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        params[key] = value
    result = client.call(f"plugin.{args.name}.{args.method}", {"params": params})
    out.result(result["result"], lambda r: out.line(str(r)))
    return EXIT_OK


MANIFEST = """\
name: {name}
version: 0.1.0
description: {description}
author: {author}
plugin_type: {kind}
main: __init__.py
cortex_version: ">=0.1.0"
"""
# What only each type reads: check plugins their schedule and settings,
# notifier plugins the action type they add (command plugins nothing more).
CHECK_MANIFEST = """\
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
rules (the file `notify.rules_path` names, /etc/cortex/alerts.yaml by default):

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
        OSError: it cannot be written (e.g. PermissionError).
    """
    root = os.path.join(directory, name)
    os.makedirs(os.path.join(root, "tests"))
    code = {"check": CHECK_CODE, "command": COMMAND_CODE, "notifier": NOTIFIER_CODE}[kind]
    body = {"check": CHECK_TESTS, "command": COMMAND_TESTS, "notifier": NOTIFIER_TESTS}[kind]
    extra = {"check": CHECK_MANIFEST, "command": "", "notifier": NOTIFIER_MANIFEST}[kind]
    files = {
        "plugin.yaml": MANIFEST.format(
            name=name, description=f"the {name} {kind} plugin", author=author, kind=kind
        )
        + extra.format(name=name),
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
    # A root daemon loads only files no one but root can write, whatever the umask.
    for folder in (os.path.join(root, "tests"), root):
        os.chmod(folder, 0o755)
    return written


def _configured_directory(args: Any) -> tuple[str, str]:
    """The daemon's `plugins.directory` and where it was learnt.

    The daemon's answer first; without one, what it would read at start:
    CORTEXD_PLUGINS__DIRECTORY, then ~/.cortex/daemon.conf, then
    /etc/cortex/daemon.conf, then the built-in default.
    """
    try:
        with Client(args.socket, timeout=min(args.timeout, ASK_TIMEOUT)) as client:
            config = client.call("config.get", {"section": "plugins"})["config"]
        return str(config["plugins"]["directory"]), "the daemon"
    except (CortexError, DaemonUnreachable, TimeoutError, OSError, KeyError, TypeError):
        pass
    from_env = os.environ.get("CORTEXD_PLUGINS__DIRECTORY")
    if from_env:
        return from_env, "CORTEXD_PLUGINS__DIRECTORY"
    for path in (os.path.expanduser(USER_CONFIG), SYSTEM_CONFIG):
        found = _directory_in(path)
        if found:
            return found, path
    return DEFAULT_PLUGIN_DIR, "the default"


def _directory_in(path: str) -> str | None:
    import yaml  # only here: other commands never pay for it

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return None
    section = data.get("plugins") if isinstance(data, dict) else None
    value = section.get("directory") if isinstance(section, dict) else None
    return value if isinstance(value, str) and value else None


def _create(client: Client | None, args: Any, out: Output) -> int:
    if not NAME.match(args.name):
        raise UsageError("a plugin name is lower-case letters, digits, - or _")
    plugins_dir, source = _configured_directory(args)
    directory = os.path.abspath(args.directory or plugins_dir)
    target = os.path.join(directory, args.name)
    try:
        files = scaffold(directory, args.name, args.type, args.author)
    except FileExistsError:
        raise LocalFileError(f"{target} exists already", path=target) from None
    except OSError as exc:
        hint = None
        if args.directory is None:
            hint = (
                f"{directory} is the daemon's plugin directory (from {source}); "
                "run as root, or create it elsewhere with --directory"
            )
        raise LocalFileError(f"cannot write {target}: {exc.strerror}", hint=hint) from None
    created = {"files": files, "plugin_directory": plugins_dir, "from": source}
    out.result(created, lambda _: _show_created(out, files, directory, target, source, plugins_dir))
    return EXIT_OK


def _show_created(
    out: Output, files: list[str], directory: str, target: str, source: str, plugins_dir: str
) -> None:
    for path in files:
        out.line(f"created {path}")
    out.line(f"test it:    (cd {target} && python3 -m pytest -q tests)")
    if os.path.realpath(directory) == os.path.realpath(plugins_dir):
        out.line("load it:    sudo cortexctl plugins reload")
    else:
        out.line(f"install it: sudo cp -r {target} {plugins_dir}/ && sudo cortexctl plugins reload")
    out.line(f"(plugin directory {plugins_dir}, from {source})")


def register(sub: Any) -> None:
    """Add `plugins` to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    plugins = command(
        sub,
        "plugins",
        help="list, enable, disable, reload, call or create plugins",
        description="Manage plugins in the daemon's plugin directory.",
        examples=[
            "cortexctl plugins list --available",
            "sudo cortexctl plugins reload",
            "sudo cortexctl plugins disable port_check",
            "sudo cortexctl plugins call greeter hello name=ops",
            "cortexctl plugins create my-check --type check",
        ],
    )
    kinds = actions(plugins, "plugins_command", "COMMAND")
    listing = command(
        kinds,
        "list",
        help="loaded plugins (--available: every one in the directory now)",
        examples=["cortexctl plugins list", "cortexctl plugins list --available --json"],
    )
    listing.add_argument("--available", action="store_true", help="also failed and disabled")
    listing.set_defaults(run=_list)
    for verb in ("enable", "disable"):
        p = command(
            kinds,
            verb,
            help=f"{verb} a plugin (admin; reloads)",
            examples=[f"sudo cortexctl plugins {verb} port_check"],
        )
        p.add_argument("name", metavar="PLUGIN")
        p.set_defaults(run=_change(f"plugins.{verb}"))
    command(
        kinds,
        "reload",
        help="load the plugin directory again (admin)",
        examples=["sudo cortexctl plugins reload"],
    ).set_defaults(run=_change("plugins.reload"))
    call = command(
        kinds,
        "call",
        help="run a command plugin's command (admin)",
        examples=[
            "sudo cortexctl plugins call greeter hello name=ops",
            "sudo cortexctl plugins call greeter hello --json",
        ],
    )
    call.add_argument("name", metavar="PLUGIN")
    call.add_argument("method", metavar="COMMAND", help="the plugin's command")
    call.add_argument("params", nargs="*", metavar="KEY=VALUE")
    call.set_defaults(run=_call)
    create = command(
        kinds,
        "create",
        help="scaffold a working plugin with its tests",
        notes=(
            "It goes into the daemon's plugin directory (asked of the daemon, else read\n"
            "from the config files), or into --directory."
        ),
        examples=[
            "sudo cortexctl plugins create my-check --type check",
            "cortexctl plugins create pager --type notifier -d /tmp",
        ],
    )
    create.add_argument("name")
    create.add_argument("--type", choices=TYPES, default="check", help="plugin type")
    create.add_argument(
        "--directory",
        "-d",
        help="where to create it (default: the daemon's plugin directory)",
    )
    create.add_argument("--author", default=os.environ.get("USER", "unknown"))
    create.set_defaults(run=_create, offline=True)
