"""A daemon with everything the examples of docs/protocol.md talk about.

Nothing of it is the host's: a journald of its own in a private mount
namespace (whose `/etc/group` also gains the `cortex` group the socket and the
`setpriv` example name, if the host lacks it), the stand-in apt of the update
tests, a release channel offering cortexd 0.2.0, a repair root with a stale
dpkg lock, a plugin directory with the `greeter` command plugin, notification
rules whose webhook is a local receiver and whose slack endpoint refuses, and
the real model.

Objects the examples name by id are made for real in a first run of the
daemon — alerts raised, a silence created — and then given the ids the
examples print (the same SQLite rows, renamed), before the daemon the
examples run against starts on that state. Dead letter 1 is the slack
delivery of the first alert, failed for real.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.daemon import DaemonProcess, running_daemon, short_tmpdir
from tests.notify.helpers import Receiver, receiver
from tests.plugins.conftest import COMMAND, write_plugin
from tests.protocol_examples import Example
from tests.test_logging import Journal, standalone_journald
from tests.updates.releases import entry, fake_deb, write_manifest
from tests.updates.test_updates_daemon import FakeApt

WAIT = 120.0
POLL = 0.1
COMMAND_TIMEOUT = 300.0
SOCKET_GROUPS = ("cortex", "cortex-admin")
# The endpoint the examples' slack action names: nothing listens there.
REFUSING_URL = "http://127.0.0.1:18182"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Methods whose examples name an alert, or a silence, by its id.
ALERT_ID_METHODS = {"alerts.get", "alerts.ack", "acknowledge_alert", "alerts.resolve"}
ALERT_ID_METHODS |= {"inference.explain"}
SILENCE_ID_METHODS = {"silences.delete"}
# Journal lines the log examples find.
JOURNAL_LINES = (
    ("myapp", "err", "worker[42]: segfault at 0 ip 00007f0c error 4 in libfoo.so"),
    ("sshd", "info", "Failed password for root from 203.0.113.9 port 4242 ssh2"),
)


@dataclass
class World:
    daemon: DaemonProcess
    journal: Journal
    webhook: Receiver

    def run(self, example: Example) -> subprocess.CompletedProcess[str]:
        """Run the example's command as printed, beside the journald, with `$SOCK` set."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SOCK": self.daemon.socket_path,
            "LANG": "C.UTF-8",
        }
        return subprocess.run(
            [*self.journal.enter, "bash", "-c", example.command],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=env,
            cwd="/",
            check=False,
        )


def wait_for(predicate: Callable[[], Any], what: str, within: float = WAIT) -> Any:
    deadline = time.monotonic() + within
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL)
    return value


def named_ids(found: list[Example], methods: set[str]) -> list[str]:
    """The UUIDs the requests of `methods` name, in document order."""
    ids: list[str] = []
    for example in found:
        if example.method in methods:
            for uuid in UUID.findall(example.command):
                if uuid not in ids:
                    ids.append(uuid)
    return ids


@contextlib.contextmanager
def example_world(found: list[Example], model_path: str) -> Iterator[World]:
    with standalone_journald() as journal, receiver("ok") as webhook:
        _add_socket_groups(journal)
        for ident, priority, text in JOURNAL_LINES:
            subprocess.run(
                [*journal.enter, "systemd-cat", "-t", ident, "-p", priority],
                input=text.encode() + b"\n",
                check=True,
                timeout=WAIT,
            )
        base = Path(short_tmpdir("cxdocs"))
        try:
            config = _config(base, webhook, model_path)
            command = [*journal.enter, sys.executable, "-m", "cortexd"]
            with running_daemon(config, command=command) as first:
                renames = _seed(first, found)
            _rename(Path(config["state_dir"]), renames)
            with running_daemon(config, command=command) as daemon:
                wait_for(lambda: daemon.call("model.status")["state"] == "ready", "the model")
                yield World(daemon, journal, webhook)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _add_socket_groups(journal: Journal) -> None:
    """Give the namespace an /etc/group of its own with the groups the examples name.

    Always a copy, even when the host has them: what the host's groups become
    while the examples run (another test suite adding or removing `cortex`) must
    not change what the examples see.
    """
    missing = []
    for name in SOCKET_GROUPS:
        try:
            grp.getgrnam(name)
        except KeyError:
            missing.append(name)
    used = {g.gr_gid for g in grp.getgrall()}
    free = (gid for gid in range(60000, 65000) if gid not in used)
    lines = Path("/etc/group").read_text().rstrip("\n").splitlines()
    lines += [f"{name}:x:{next(free)}:" for name in missing]
    with tempfile.NamedTemporaryFile("w", prefix="cxgroup", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(fh.name, 0o644)
    try:
        subprocess.run(
            [*journal.enter, "mount", "--bind", fh.name, "/etc/group"], check=True, timeout=WAIT
        )
    finally:
        os.unlink(fh.name)  # the bind mount keeps the file for the namespace


def _config(base: Path, webhook: Receiver, model_path: str) -> dict[str, Any]:
    apt_root = base / "apt"
    apt_root.mkdir()
    apt = FakeApt(apt_root)
    host = base / "host"
    (host / "var/lib/dpkg").mkdir(parents=True)
    (host / "var/lib/dpkg/lock").write_text("31337\n")
    (host / "etc/cortex").mkdir(parents=True)
    plugins = base / "plugins"
    plugins.mkdir()
    os.chmod(base, 0o755)
    os.chmod(plugins, 0o755)
    write_plugin(plugins, "greeter", COMMAND, plugin_type="command")
    rules = base / "alerts.yaml"
    rule = {
        "name": "ops",
        "actions": [
            {"type": "webhook", "url": webhook.url("/hook")},
            {"type": "slack", "url": REFUSING_URL},
        ],
    }
    rules.write_text(yaml.safe_dump({"alerts": [rule]}))
    return {
        "state_dir": str(base / "state"),
        # model.load's examples load the installed model, outside this state directory.
        "inference": {"model_path": model_path, "model_dirs": [os.path.dirname(model_path)]},
        "notify": {
            "rules_path": str(rules),
            "max_attempts": 2,
            "backoff_seconds": 0.2,
            "backoff_max_seconds": 0.5,
            "rate_limit_per_minute": 1000,
        },
        "plugins": {"directory": str(plugins)},
        "repair": {
            "root": str(host),
            "config_dir": str(host / "etc/cortex"),
            "runtime_dir": str(host / "run/cortex"),
        },
        "logs": {"poll_seconds": 0.5},
        "updates": {**apt.config()["updates"], "channel": _release_channel(base)},
    }


def _release_channel(base: Path) -> str:
    """A file:// channel offering cortexd 0.2.0 (a tiny real .deb, only ever simulated)."""
    site = base / "releases"
    site.mkdir()
    deb = fake_deb(site, "0.2.0")
    extra = {"architecture": "amd64", "released": "2026-12-01", "notes": "Faster doctor runs."}
    return f"file://{write_manifest(site, [entry(deb, '0.2.0', **extra)])}"


def _seed(d: DaemonProcess, found: list[Example]) -> dict[str, dict[str, str]]:
    """Make the alerts and silences the examples name; returns table -> {made id: named id}."""
    renames: dict[str, dict[str, str]] = {"alerts": {}, "silences": {}}
    for n, named in enumerate(named_ids(found, ALERT_ID_METHODS)):
        params = {
            "title": "Backup job failed" if n == 0 else f"Example alert {n}",
            "severity": "ERROR",
            "category": "service",
            "description": "nightly backup exited 2",
            "labels": {"job": f"example-{n}"},
            "source": "backup-script",
        }
        made = d.call("alerts.raise", params)["alert"]["id"]
        renames["alerts"][made] = named
    for named in named_ids(found, SILENCE_ID_METHODS):
        params = {"matchers": ['job="nothing-matches"'], "duration_seconds": 86400}
        made = d.call("alerts.silence", params)["silence"]["id"]
        renames["silences"][made] = named
    wait_for(
        lambda: d.call("deadletter.list", {"action": "ops.slack"})["dead_letters"],
        "a dead letter for ops.slack",
    )
    wait_for(
        lambda: any(
            n["status"] == "completed" and n["action"] == "ops.webhook"
            for n in d.call("notify.history", {"since": 0})["notifications"]
        ),
        "a webhook delivery",
    )
    return renames


def _rename(state_dir: Path, renames: dict[str, dict[str, str]]) -> None:
    with contextlib.closing(sqlite3.connect(state_dir / "alerts.db")) as db, db:
        for table, pairs in renames.items():
            for made, named in pairs.items():
                db.execute(f"UPDATE {table} SET id = ? WHERE id = ?", (named, made))
