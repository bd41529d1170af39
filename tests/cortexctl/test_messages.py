"""What operators read when something is reported: a config error's problems, each
once; a log line naming its component once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.daemon import running_daemon

CLI_TIMEOUT = 60


def test_a_config_error_prints_each_problem_once(tmp_path: Path) -> None:
    with running_daemon() as daemon:
        config = Path(daemon.config_path)
        good = yaml.safe_load(config.read_text())
        one = {**good, "server": {**good["server"], "max_connections": -1}}
        config.write_text(yaml.safe_dump(one))
        done = subprocess.run(
            [sys.executable, "-m", "cortexctl", "--socket", daemon.socket_path, "config", "reload"],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        assert done.returncode == 1
        assert done.stderr.count("server.max_connections") == 1, done.stderr
        assert done.stderr.startswith("cortexctl: CONFIG_ERROR: invalid configuration: ")

        two = {**one, "alerts": {"coalesce_seconds": "often"}}
        config.write_text(yaml.safe_dump(two))
        done = subprocess.run(
            [sys.executable, "-m", "cortexctl", "--socket", daemon.socket_path, "config", "reload"],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        assert done.returncode == 1
        lines = done.stderr.splitlines()
        assert lines[0] == "cortexctl: CONFIG_ERROR: invalid configuration:"
        assert sum("server.max_connections" in line for line in lines) == 1
        assert sum("alerts.coalesce_seconds" in line for line in lines) == 1
        # The daemon kept its configuration and serves.
        assert daemon.call("ping")["pong"] is True


def test_the_rules_reload_log_line_names_its_component_once(tmp_path: Path) -> None:
    with running_daemon() as daemon:
        rules = Path(daemon.workdir) / "alerts.yaml"
        rules.write_text(
            yaml.safe_dump(
                {
                    "alerts": [
                        {
                            "name": "disk",
                            "check": "disk_space",
                            "actions": [{"type": "webhook", "url": "http://127.0.0.1:9/x"}],
                        }
                    ]
                }
            )
        )
        daemon.call("config.reload")

        def reloaded() -> bool:
            return "1 rules reloaded" in daemon.log()

        deadline_poll(reloaded)
        lines = [x for x in daemon.log().splitlines() if "rules reloaded" in x]
        # Plugins settling at start-up reload the (then empty) rules too.
        assert all(" INFO  notify: " in line for line in lines), lines
        assert lines[-1].endswith(" notify: 1 rules reloaded")
        assert "notify: notify:" not in daemon.log()


def deadline_poll(predicate: Callable[[], bool], within: float = 30.0) -> None:
    end = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.05)
