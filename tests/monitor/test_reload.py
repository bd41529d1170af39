"""What a reload does to the running checks, seen over the socket of a real daemon.

A changed interval takes effect at once; checks whose settings did not
change keep their state — cpu_usage its 5-minute window — across a config
reload and a plugin reload.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.daemon import DaemonProcess, running_daemon

DEADLINE = 30.0


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value}")
        time.sleep(0.05)


def edit_config(daemon: DaemonProcess, change: Callable[[dict[str, Any]], None]) -> None:
    path = Path(daemon.config_path)
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def last_run(daemon: DaemonProcess, check_id: str) -> float | None:
    listed = daemon.call("checks.list")["checks"]
    found: float | None = next(c["last_run"] for c in listed if c["id"] == check_id)
    return found


def test_a_shortened_interval_takes_effect_at_once() -> None:
    with running_daemon({"checks": {"zombie_processes": {"interval_seconds": 600}}}) as daemon:
        first = poll(lambda: last_run(daemon, "zombie_processes"), bool, "the start-up run")

        def shorten(config: dict[str, Any]) -> None:
            config["checks"]["zombie_processes"] = {"interval_seconds": 1}

        edit_config(daemon, shorten)
        daemon.call("config.reload")
        # Not 600 s after the last run: about a second after the reload.
        poll(lambda: last_run(daemon, "zombie_processes"), lambda t: t > first, "a second run")


def window(daemon: DaemonProcess) -> float:
    (result,) = daemon.call("checks.run", {"ids": ["cpu_usage"]}, timeout=DEADLINE)["results"]
    seconds: float = result["details"]["window_seconds"]
    return seconds


def test_cpu_usage_keeps_its_window_across_config_and_plugin_reloads() -> None:
    with running_daemon({"checks": {"cpu_usage": {"interval_seconds": 0.5}}}) as daemon:
        before = poll(lambda: window(daemon), lambda w: w >= 2.0, "two seconds of samples")

        def unrelated(config: dict[str, Any]) -> None:
            config["alerts"] = {"coalesce_seconds": 42}

        edit_config(daemon, unrelated)
        assert daemon.call("config.reload")["reloaded"] is True
        after_config = window(daemon)
        assert after_config >= before  # a new instance would start again at 0.3 s

        daemon.call("plugins.reload", timeout=DEADLINE)
        assert window(daemon) >= after_config
