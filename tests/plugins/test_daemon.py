"""Plugins in the real daemon, loaded from a temp directory: good, failing import,
raising, hanging, wrongly owned, world-writable and wrong-version plugins each end
the right way while the daemon keeps serving."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from cortexctl.cli import main as cortexctl
from cortexd.protocol import CortexError
from tests.daemon import DaemonProcess, running_daemon
from tests.metrics.helpers import sample
from tests.plugins.conftest import (
    BAD_IMPORT,
    COMMAND,
    GOOD_CHECK,
    HANGING,
    RAISING,
    VETO,
    copy_example,
    write_plugin,
)

pytestmark = pytest.mark.root
PLUGIN_TIMEOUT = 2.0


def ctl(daemon: DaemonProcess, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cortexctl(["--socket", daemon.socket_path, *args], stdout=out)
    return code, out.getvalue()


@pytest.fixture
def plugin_dir(tmp_path: Path, listener: int) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the ownership rules apply to a root daemon; chown needs root")
    base = tmp_path / "plugins"
    base.mkdir()
    os.chmod(tmp_path, 0o755)
    copy_example(base, listener)
    write_plugin(base, "greeter", COMMAND, plugin_type="command")
    write_plugin(base, "raising", RAISING)
    write_plugin(base, "bad-import", BAD_IMPORT)
    write_plugin(base, "hanging", HANGING)
    write_plugin(base, "future", GOOD_CHECK, cortex_version=">=99.0")
    owned = write_plugin(base, "foreign", GOOD_CHECK)
    os.chown(owned / "__init__.py", 65534, 65534)
    loose = write_plugin(base, "loose", GOOD_CHECK)
    os.chmod(loose / "plugin.yaml", 0o666)
    write_plugin(base, "notifier", "def send(event, options):\n    pass\n", plugin_type="notifier")
    return base


def test_each_plugin_ends_the_right_way_and_the_daemon_serves(plugin_dir: Path) -> None:
    config = {"plugins": {"directory": str(plugin_dir), "timeout_seconds": PLUGIN_TIMEOUT}}
    with running_daemon(config) as daemon:
        listed = {p["name"]: p for p in daemon.call("plugins.list")["plugins"]}
        status = {name: p["status"] for name, p in listed.items()}
        assert status == {
            "port_check": "loaded",
            "greeter": "loaded",
            "raising": "loaded",  # imports fine; its check run is an ERROR
            "bad-import": "failed",
            "hanging": "failed",
            "future": "failed",
            "foreign": "failed",
            "loose": "failed",
            "notifier": "loaded",
        }
        assert "ModuleNotFoundError" in listed["bad-import"]["error"]
        assert "timed out after 2s" in listed["hanging"]["error"]
        assert "needs cortex >=99.0" in listed["future"]["error"]
        assert listed["foreign"]["error"] == (
            f"{plugin_dir}/foreign/__init__.py is owned by uid 65534, not root; not loaded"
        )
        assert (
            f"{plugin_dir}/loose/plugin.yaml is writable by group or others"
            in (listed["loose"]["error"])
        )
        assert daemon.call("status")["components"]["plugins"]["plugins"] == {
            "loaded": 4,
            "failed": 5,
        }

        passed = 'cortex_check_runs_total{check="plugin_port_check",status="pass"}'
        failed = 'cortex_check_runs_total{check="plugin_raising",status="error"}'
        before = daemon.call("metrics")["text"]
        results = {
            r["check_id"]: r
            for r in daemon.call("checks.run", {"ids": ["plugin_port_check", "plugin_raising"]})[
                "results"
            ]
        }
        # The plugins' check runs are counted like any check's.
        after = daemon.call("metrics")["text"]
        assert (sample(after, passed) or 0) >= (sample(before, passed) or 0) + 1
        assert (sample(after, failed) or 0) >= (sample(before, failed) or 0) + 1
        assert results["plugin_port_check"]["status"] == "PASS"
        assert "test-service answers" in results["plugin_port_check"]["message"]
        assert results["plugin_raising"]["status"] == "ERROR"
        assert "the plugin's own bug" in results["plugin_raising"]["message"]

        answer = daemon.call("plugin.greeter.hello", {"params": {"name": "Cortex"}})
        assert answer == {"result": {"greeting": "Hello, Cortex!"}}
        code, text = ctl(daemon, "plugins", "call", "greeter", "hello", "name=ops")
        assert code == 0 and "Hello, ops!" in text
        code, text = ctl(daemon, "plugins", "list")
        assert code == 0
        assert "port_check" in text and "hanging" not in text
        assert "(5 more not loaded; --available shows them)" in text
        code, text = ctl(daemon, "plugins", "list", "--available")
        assert "hanging" in text and "timed out after 2s (worker killed)" in text
        assert "is owned by uid 65534, not root; not loaded" in text


def test_a_dropped_in_plugin_shows_in_doctor_after_reload(tmp_path: Path) -> None:
    base = tmp_path / "plugins"
    base.mkdir()
    config = {"plugins": {"directory": str(base), "timeout_seconds": PLUGIN_TIMEOUT}}
    with running_daemon(config) as daemon:
        code, text = ctl(daemon, "doctor", "--category", "plugins")
        assert "plugin_late" not in text
        write_plugin(base, "late", GOOD_CHECK, settings={"answer": 42})
        code, text = ctl(daemon, "plugins", "reload")
        assert code == 0, text
        assert "late" in text
        code, text = ctl(daemon, "doctor", "--category", "plugins")
        assert code == 1, text
        assert "plugin_late" in text and "answer 42" in text

        code, text = ctl(daemon, "plugins", "disable", "late")
        assert code == 0, text
        assert daemon.call("plugins.list")["plugins"][0]["status"] == "disabled"
        with pytest.raises(CortexError) as gone:
            daemon.call("checks.run", {"ids": ["plugin_late"]})
        assert gone.value.code.name == "INVALID_PARAMS"
        code, text = ctl(daemon, "plugins", "enable", "late")
        assert code == 0
        assert daemon.call("plugins.list")["plugins"][0]["status"] == "loaded"


def test_a_plugin_pre_fix_hook_vetoes_a_fix(tmp_path: Path) -> None:
    base = tmp_path / "plugins"
    base.mkdir()
    write_plugin(base, "freeze", VETO)
    host = tmp_path / "host"
    (host / "var/lib/dpkg").mkdir(parents=True)
    (host / "var/lib/dpkg/lock").write_text("1\n")
    config = {
        "plugins": {"directory": str(base), "timeout_seconds": PLUGIN_TIMEOUT},
        "repair": {"root": str(host), "config_dir": str(host / "etc")},
    }
    with running_daemon(config) as daemon:
        hooks = daemon.call("plugins.list")["hooks"]["pre_fix"]
        assert hooks == [{"owner": "plugin freeze", "priority": 50}]
        with pytest.raises(CortexError) as vetoed:
            daemon.call("fixes.apply", {"fix_id": "clear_apt_locks"})
        assert vetoed.value.code.name == "CANCELLED"
        assert "plugin freeze: plugin says no to clear_apt_locks" in vetoed.value.message
        assert (host / "var/lib/dpkg/lock").exists()


HOOK_RECORDER = """
import json

RECORD = {record!r}


def _note(what):
    with open(RECORD, "a") as handle:
        handle.write(json.dumps(what) + "\\n")


def startup(payload):
    _note("startup")


def loaded(payload):
    _note("loaded " + payload["plugin"]["name"])


def pre_check(payload):
    _note("pre " + payload["check_id"])


def post_check(payload):
    _note("post " + payload["check_id"] + " " + payload["status"])


def shutdown(payload):
    _note("shutdown")


HOOKS = {{
    "startup": startup,
    "plugin_loaded": loaded,
    "pre_check": pre_check,
    "post_check": post_check,
    "shutdown": shutdown,
}}
COMMANDS = {{"ping": lambda params: "pong"}}
"""


def test_plugin_hooks_see_startup_loading_checks_and_shutdown(tmp_path: Path) -> None:
    base = tmp_path / "plugins"
    base.mkdir()
    record = tmp_path / "hooks.jsonl"
    write_plugin(base, "recorder", HOOK_RECORDER.format(record=str(record)), plugin_type="command")
    config = {"plugins": {"directory": str(base), "timeout_seconds": PLUGIN_TIMEOUT}}
    with running_daemon(config) as daemon:
        daemon.call("checks.run", {"ids": ["memory"]})
        daemon.stop()
    notes = [json.loads(line) for line in record.read_text().splitlines()]
    assert notes[0] == "loaded recorder"
    assert notes.count("startup") == 1  # checks already scheduled may run hooks before it
    assert "pre memory" in notes
    post = [n for n in notes if n.startswith("post memory ")]
    assert post and post[0].split()[-1] in ("PASS", "WARN", "FAIL")
    assert notes.index("pre memory") < notes.index(post[0])
    # Hooks end with the plugin manager: nothing starts after shutdown (one in flight may finish).
    assert "shutdown" in notes[-3:]
