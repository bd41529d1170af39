"""What operators read when something is reported: a log line names its component once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.daemon import running_daemon


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
