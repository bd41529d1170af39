"""Backups and snapshots keep the notification rules and the plugins, and put them back.

Through the real daemon and the real CLI: the rules file lives outside the
daemon's configuration directory and the plugins in a directory of their
own, as an operator may configure them. A restore or rollback brings back a
deleted rules file and deleted plugins, the plugins load again, and alerts
reach a restored notifier plugin through the restored rules. What a
restore refuses (a path climbing with `..`, a link, a place outside the
plugins directory) is listed and nothing is written there; a member of the
admin group, a real account, may not add or change plugin code that way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from cortexd.backup import hostkey
from tests.daemon import DaemonProcess, running_daemon, short_tmpdir
from tests.notify.helpers import poll
from tests.notify.test_daemon import NO_CHECKS
from tests.plugins.conftest import write_plugin
from tests.security.accounts import Accounts, Runner, accounts, skip_reason

WAIT = 60.0
RECORDER = """
import json

def send(event, options):
    with open(options["path"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"title": event["alert"]["title"]}) + "\\n")
    return {"written": options["path"]}
"""
CHECK = """
def check(settings):
    return {"status": "PASS", "message": "sensors fine"}
"""


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory root alone may write (a root daemon's rule), readable by accounts."""
    path = Path(short_tmpdir("cxp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Setup:
    """The rules file in one directory, the plugins in another; a notifier and a check."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rules = root / "srv" / "alerts.yaml"
        self.rules.parent.mkdir(mode=0o755)
        self.plugins = root / "plugins"
        self.plugins.mkdir(mode=0o755)
        self.received = root / "received.jsonl"
        action = {"type": "record", "name": "ops.record", "path": str(self.received)}
        self.rules.write_text(yaml.safe_dump({"alerts": [{"name": "ops", "actions": [action]}]}))
        self.rules.chmod(0o600)
        write_plugin(
            self.plugins,
            "recorder",
            RECORDER,
            plugin_type="notifier",
            action_type="record",
            action_options={"path": "required"},
        )
        sensors = write_plugin(self.plugins, "sensors", CHECK)
        (sensors / "bin").mkdir(mode=0o755)
        helper = sensors / "bin" / "read-sensor"
        helper.write_text("#!/bin/sh\necho 41\n")
        helper.chmod(0o755)

    def config(self) -> dict[str, Any]:
        return {
            **NO_CHECKS,
            "notify": {"rules_path": str(self.rules), "rate_limit_per_minute": 1000},
            "plugins": {"directory": str(self.plugins), "timeout_seconds": 10},
        }

    def files(self) -> dict[str, tuple[bytes, int]]:
        """Every file and directory of the rules and plugins: contents and mode."""
        found = {str(self.rules): (self.rules.read_bytes(), _mode(self.rules))}
        for path in sorted(self.plugins.rglob("*")):
            if "__pycache__" not in path.parts:
                data = b"" if path.is_dir() else path.read_bytes()
                found[str(path)] = (data, _mode(path))
        return found

    def delete(self, daemon: DaemonProcess) -> None:
        """What an operator's mistake does: rules and plugins gone, and the daemon knows."""
        self.rules.unlink()
        shutil.rmtree(self.plugins / "recorder")
        shutil.rmtree(self.plugins / "sensors")
        daemon.call("plugins.reload", timeout=WAIT)
        daemon.call("config.reload")
        poll(lambda: notify_state(daemon)["rules"] == 0, what="the rules to be forgotten")
        assert daemon.call("plugins.list")["plugins"] == []


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def notify_state(daemon: DaemonProcess) -> dict[str, Any]:
    state: dict[str, Any] = daemon.call("status")["components"]["notify"]
    return state


def plugin_status(daemon: DaemonProcess) -> dict[str, str]:
    return {p["name"]: p["status"] for p in daemon.call("plugins.list")["plugins"]}


def cortexctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", daemon.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def assert_working_again(daemon: DaemonProcess, setup: Setup, title: str) -> None:
    """The restored plugins loaded, the rules name the restored action type, alerts arrive."""
    poll(lambda: plugin_status(daemon) == {"recorder": "loaded", "sensors": "loaded"})
    poll(lambda: notify_state(daemon)["rules"] == 1, what="the rules to be read again")
    assert notify_state(daemon)["rules_errors"] == []
    daemon.call("alerts.raise", {"title": title, "severity": "ERROR", "labels": {"t": title}})
    poll(
        lambda: setup.received.exists() and title in setup.received.read_text(),
        what="the alert to reach the restored notifier plugin",
    )


def test_restore_config_brings_back_a_deleted_rules_file_and_plugins(place: Path) -> None:
    setup = Setup(place)
    archive = place / "cortex.tar.gz"
    with running_daemon(setup.config()) as daemon:
        poll(lambda: plugin_status(daemon) == {"recorder": "loaded", "sensors": "loaded"})
        before = setup.files()
        done = cortexctl(daemon, "--json", "backup", str(archive))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["left_out"] == []
        setup.delete(daemon)

        done = cortexctl(daemon, "restore", str(archive), "--config", "-y")
        assert done.returncode == 0, done.stderr
        assert str(setup.rules) in done.stdout
        assert str(setup.plugins / "sensors" / "bin" / "read-sensor") in done.stdout
        assert setup.files() == before
        assert_working_again(daemon, setup, "restored from a backup")

        # Once everything is back, the same archive has nothing of the plugins to write.
        done = cortexctl(daemon, "--json", "restore", str(archive), "--config", "-y")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["plugins_restored"] == []
        assert str(setup.rules) in result["config_restored"]


def test_rollback_brings_back_a_deleted_rules_file_and_plugins(place: Path) -> None:
    setup = Setup(place)
    with running_daemon(setup.config()) as daemon:
        poll(lambda: plugin_status(daemon) == {"recorder": "loaded", "sensors": "loaded"})
        before = setup.files()
        snapshot = daemon.call("updates.snapshot", timeout=WAIT)["snapshot"]
        origins = {entry["origin"] for entry in snapshot["config"]}
        assert set(before) - {str(p) for p in setup.plugins.rglob("*") if p.is_dir()} <= origins
        setup.delete(daemon)

        result = daemon.call("updates.rollback", {"id": snapshot["id"]}, timeout=WAIT)
        assert result["plugins_restored"] == ["recorder", "sensors"]
        assert str(setup.rules) in result["config_restored"]
        assert setup.files() == before
        assert_working_again(daemon, setup, "rolled back")


def test_a_plugin_a_backup_cannot_keep_whole_is_named(place: Path) -> None:
    setup = Setup(place)
    (setup.plugins / "sensors" / "calibration").symlink_to("/etc/hostname")
    with running_daemon(setup.config()) as daemon:
        done = cortexctl(daemon, "--json", "backup", str(place / "b.tar.gz"))
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["left_out"] == [
            {
                "path": str(setup.plugins / "sensors"),
                "reason": f"{setup.plugins}/sensors/calibration is a symbolic link",
            }
        ]
        assert not any(
            f.get("origin", "").startswith(f"{setup.plugins}/sensors/") for f in result["files"]
        )


# -- what a restore refuses ------------------------------------------------------------


def test_an_archive_taken_while_the_rules_were_broken_is_refused(place: Path) -> None:
    """Restoring it would leave a file the daemon refuses at its next start (exit code 2)."""
    setup = Setup(place)
    archive = place / "b.tar.gz"
    with running_daemon(setup.config()) as daemon:
        good = setup.rules.read_text()
        setup.rules.write_text("alerts:\n- name: ops\n  actions:\n  - {type: webhook}\n")
        assert cortexctl(daemon, "backup", str(archive)).returncode == 0
        setup.rules.write_text(good)
        daemon.call("config.reload")

        done = cortexctl(daemon, "restore", str(archive), "--config", "-y")
        assert done.returncode == 1
        assert "CONFIG_ERROR" in done.stderr
        assert f"{setup.rules}: rule 'ops': field 'actions[0].url'" in done.stderr
        assert setup.rules.read_text() == good
        assert not list((Path(daemon.state_dir) / "backups").glob("pre-restore-*"))
        assert daemon.call("ping")["pong"] is True


def rewrite(source: Path, target: Path, origins: dict[str, str], key: bytes) -> None:
    """Copy an archive with the origins of some members changed, signed again with `key`:
    the worst case, someone who holds this host's key."""
    with tarfile.open(source) as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    manifest = orjson.loads(contents.pop("manifest.json"))
    for entry in manifest["files"]:
        entry["origin"] = origins.get(entry.get("origin", ""), entry.get("origin"))
    manifest["digest"] = hashlib.sha256(
        orjson.dumps(manifest["files"], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    manifest["signature"] = hostkey.sign(key, manifest)
    with tarfile.open(target, "w:gz") as tar:
        for name, data in {"manifest.json": orjson.dumps(manifest), **contents}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_plugin_files_aimed_elsewhere_are_refused_and_written_nowhere(place: Path) -> None:
    setup = Setup(place)
    outside = place / "usr" / "local" / "lib"
    outside.mkdir(parents=True)
    linked = place / "linked-target"
    linked.mkdir()
    old = place / "etc" / "cortex" / "plugins" / "sensors"
    old.mkdir(parents=True)
    archive = place / "b.tar.gz"
    with running_daemon(setup.config()) as daemon:
        assert cortexctl(daemon, "backup", str(archive)).returncode == 0
        key = (Path(daemon.state_dir) / "host.key").read_bytes()
        (setup.plugins / "linked").symlink_to(linked)
        sensors = f"{setup.plugins}/sensors"
        aimed = {
            f"{sensors}/__init__.py": f"{setup.plugins}/../usr/local/lib/x.py",
            f"{sensors}/plugin.yaml": f"{setup.plugins}/linked/plugin.yaml",
            f"{sensors}/bin/read-sensor": str(outside / "read-sensor"),
            f"{setup.plugins}/recorder/__init__.py": f"{old}/__init__.py",
            f"{setup.plugins}/recorder/plugin.yaml": f"{setup.plugins}/plugin.yaml",
        }
        forged = place / "forged.tar.gz"
        rewrite(archive, forged, aimed, key)
        shutil.rmtree(setup.plugins / "sensors")
        shutil.rmtree(setup.plugins / "recorder")

        done = cortexctl(daemon, "--json", "restore", str(forged), "--config", "-y")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        skipped = {s["origin"]: s["reason"] for s in result["config_skipped"]}
        assert skipped == {
            aimed[f"{sensors}/__init__.py"]: (
                "not a normalised path (a '.', '..' or empty component)"
            ),
            aimed[f"{sensors}/plugin.yaml"]: (
                "a plugin file restore may not write: a component of the path is a symbolic link"
            ),
            aimed[f"{sensors}/bin/read-sensor"]: (
                "not one of the files the daemon reads its configuration from"
            ),
            aimed[f"{setup.plugins}/recorder/__init__.py"]: (
                "not one of the files the daemon reads its configuration from"
            ),
            aimed[f"{setup.plugins}/recorder/plugin.yaml"]: (
                "a plugin file restore may not write: not inside a plugin's directory "
                "(plugins are directories)"
            ),
        }
        assert result["plugins_restored"] == []
        assert list(outside.iterdir()) == []
        assert list(linked.iterdir()) == []
        assert list(old.iterdir()) == []
        assert sorted(p.name for p in setup.plugins.iterdir()) == ["linked"]


# -- a member of the admin group ----------------------------------------------------------


@pytest.fixture(scope="module")
def accts() -> Iterator[Accounts]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with accounts() as made:
        yield made


@pytest.fixture(scope="module")
def runner(accts: Accounts) -> Iterator[Runner]:
    with Runner.prepared(accts["reader"]) as prepared:
        yield prepared


@pytest.mark.root
def test_an_admin_may_not_bring_back_or_change_plugin_code(
    accts: Accounts, runner: Runner, place: Path
) -> None:
    setup = Setup(place)
    admin = accts["admin"]
    home = place / "admin"
    home.mkdir()
    os.chown(home, admin.uid, admin.gid)
    with running_daemon({**setup.config(), **accts.daemon_config()}) as daemon:
        sock = daemon.socket_path
        poll(lambda: plugin_status(daemon) == {"recorder": "loaded", "sensors": "loaded"})
        archive = home / "b.tar.gz"
        done = runner.cortexctl(admin, "--socket", sock, "backup", str(archive))
        assert done.returncode == 0, done.stderr
        snapshot = daemon.call("updates.snapshot", timeout=WAIT)["snapshot"]["id"]
        # Nothing of the plugins changed yet: the admin may restore the configuration.
        done = runner.cortexctl(admin, "--socket", sock, "restore", str(archive), "--config", "-y")
        assert done.returncode == 0, done.stderr

        # Root removes one plugin and changes the other.
        shutil.rmtree(setup.plugins / "recorder")
        code = setup.plugins / "sensors" / "__init__.py"
        code.write_text(CHECK.replace("sensors fine", "sensors checked by root"))
        daemon.call("plugins.reload", timeout=WAIT)
        after = setup.files()
        raised = daemon.call("alerts.raise", {"title": "after the backup"})["alert"]["id"]
        kept = list((Path(daemon.state_dir) / "backups").glob("pre-restore-*"))

        done = runner.cortexctl(admin, "--socket", sock, "restore", str(archive), "--config", "-y")
        assert done.returncode == 1
        assert "PERMISSION_DENIED" in done.stderr
        assert "only root may change the plugin files" in done.stderr
        for path in ("recorder/plugin.yaml", "recorder/__init__.py", "sensors/__init__.py"):
            assert f"{setup.plugins}/{path}" in done.stderr
        assert f"{setup.plugins}/sensors/plugin.yaml" not in done.stderr
        assert setup.files() == after
        assert daemon.call("alerts.get", {"id": raised})["alert"]["title"] == "after the backup"
        assert list((Path(daemon.state_dir) / "backups").glob("pre-restore-*")) == kept

        answer = runner.calls(admin, sock, [("updates.rollback", {"id": snapshot})])[0]
        assert answer["error"]["data"]["name"] == "PERMISSION_DENIED"
        assert answer["error"]["data"]["keys"] == []
        assert sorted(answer["error"]["data"]["plugin_files"]) == [
            f"{setup.plugins}/recorder/__init__.py",
            f"{setup.plugins}/recorder/plugin.yaml",
            f"{setup.plugins}/sensors/__init__.py",
        ]
        assert setup.files() == after

        # Root may put its own earlier plugins back.
        done = cortexctl(daemon, "restore", str(archive), "--config", "-y")
        assert done.returncode == 0, done.stderr
        assert "sensors fine" in code.read_text()
        poll(lambda: plugin_status(daemon) == {"recorder": "loaded", "sensors": "loaded"})
