"""Progress on a terminal for work that takes over a second, run on a real pty; and
none of it in a pipe or with --json."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cortexctl.terminal import CORTEXCTL, cli_env, on_terminal
from tests.daemon import DaemonProcess, running_daemon
from tests.plugins.conftest import write_plugin
from tests.updates.test_updates_daemon import FakeApt

CLI_TIMEOUT = 120
# Longer than the progress line's one-second delay, on any machine.
SLOW_CHECK = """
import time

def check(settings):
    time.sleep(2.5)
    return {"status": "PASS", "message": "took its time"}
"""
ERASE = "\r\x1b[K"


@pytest.fixture
def slow_check_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("root only: the daemon loads plugins only when root owns their files")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    os.chmod(tmp_path, 0o755)
    write_plugin(plugins, "slow", SLOW_CHECK)
    with running_daemon({"plugins": {"directory": str(plugins), "timeout_seconds": 30}}) as d:
        assert "plugin_slow" in {c["id"] for c in d.call("checks.list")["checks"]}
        yield d


@pytest.mark.root
def test_doctor_shows_which_checks_are_done_on_a_terminal(
    slow_check_daemon: DaemonProcess,
) -> None:
    doctor = [*CORTEXCTL, "--socket", slow_check_daemon.socket_path, "doctor"]
    code, shown = on_terminal([*doctor, "--check", "memory", "--check", "plugin_slow"])
    assert code == 0, shown
    assert "running checks" in shown
    # The quick check finished long before the slow one: the line says so.
    assert "1 of 2 done; waiting for plugin_slow" in shown
    # The line was erased before the report, which reads as it does in a pipe.
    report = shown[shown.rindex(ERASE) + len(ERASE) :]
    assert report.startswith("DOCTOR OK - 2 PASS")
    assert "plugin_slow  took its time" in report


@pytest.mark.root
def test_doctor_shows_no_progress_in_a_pipe_or_with_json(
    slow_check_daemon: DaemonProcess,
) -> None:
    doctor = [*CORTEXCTL, "--socket", slow_check_daemon.socket_path, "doctor"]
    piped = subprocess.run(
        [*doctor, "--check", "plugin_slow"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=cli_env(),
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("DOCTOR OK - 1 PASS")
    for stream in (piped.stdout, piped.stderr):
        assert "running checks" not in stream
        assert "\x1b" not in stream and "\r" not in stream
    code, shown = on_terminal([*doctor, "--check", "plugin_slow", "--json"])
    assert code == 0
    assert "running checks" not in shown and "\x1b" not in shown
    assert json.loads(shown)["results"][0]["message"] == "took its time"


def test_update_apply_shows_its_phase_while_apt_runs(tmp_path: Path) -> None:
    apt = FakeApt(tmp_path)
    hold = tmp_path / "hold"
    hold.write_text("")

    def release(shown: bytes) -> None:
        # apt waits on the hold file: let it go once the progress line says so.
        if b"snapshot taken, running apt" in shown and hold.exists():
            hold.unlink()

    with running_daemon(apt.config()) as daemon:
        apply = [*CORTEXCTL, "--socket", daemon.socket_path, "update", "apply", "--packages", "-y"]
        code, shown = on_terminal(apply, while_running=release)
    assert code == 0, shown
    assert not hold.exists(), "the progress line never appeared"
    assert "applying updates" in shown
    assert "snapshot taken, running apt" in shown
    assert "Setting up openssl ..." in shown
    assert shown.rstrip().endswith("applied: openssl, libfoo1, cortex-fake-tool")


def test_a_piped_update_apply_prints_no_progress(tmp_path: Path) -> None:
    apt = FakeApt(tmp_path)
    with running_daemon(apt.config()) as daemon:
        done = subprocess.run(
            [*CORTEXCTL, "--socket", daemon.socket_path, "update", "apply", "--packages", "-y"],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 0, done.stderr
    assert "applying updates" not in done.stdout + done.stderr
    assert "\x1b" not in done.stdout and "\r" not in done.stdout
    assert done.stdout.rstrip().endswith("applied: openssl, libfoo1, cortex-fake-tool")
