"""The system-update installer's decisions, with systemctl, dpkg-query and apt scripted.

The installer acts on PID 1 (restarts, reset-failed) and on dpkg, which no
test may do on this host. Its real run — install, a restart through systemd,
a failed start and the rollback — is in the systemd trial
(tests/test_deb_package.py). Here a scripted stand-in answers the same
commands so that the branches the trial cannot reach cheaply are covered:
a daemon the package did not restart, one that never answers in time, and a
rollback that itself fails. The plan is a real file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cortexd.updates import installer

OLD, NEW = "0.1.0", "0.2.0"


class Host:
    """What systemctl, dpkg-query and apt say, and what was asked of them."""

    def __init__(self, *, new_starts: bool = True, postinst_restarts: bool = True) -> None:
        self.version = OLD
        self.state = {"ActiveState": "active", "SubState": "running", "Result": "success"}
        self.pid = 100
        self.new_starts = new_starts
        self.postinst_restarts = postinst_restarts
        self.kept_install_fails = False
        self.calls: list[str] = []
        self.next_pid = 200

    def _start(self) -> None:
        if self.version == NEW and not self.new_starts:
            self.state = {"ActiveState": "activating", "SubState": "auto-restart",
                          "Result": "exit-code"}  # fmt: skip
            self.pid = 0
        else:
            self.state = {"ActiveState": "active", "SubState": "running", "Result": "success"}
            self.pid = self.next_pid
            self.next_pid += 1

    def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        self.calls.append(" ".join(argv))
        if argv[0] == "systemctl" and argv[1] == "show":
            lines = [f"{k}={v}" for k, v in self.state.items()] + [f"MainPID={self.pid}"]
            return 0, "\n".join(lines)
        if argv[0] == "systemctl" and argv[1] == "restart":
            self._start()
            return 0, ""
        if argv[0] == "systemctl":
            return 0, ""
        if argv[0] == "dpkg-query":
            return 0, f"{self.version}\tii "
        if argv[0] == "apt-get":
            deb = argv[-1]
            if "kept" in deb and self.kept_install_fails:
                return 100, "E: dpkg was interrupted"
            self.version = OLD if "kept" in deb else NEW
            if self.postinst_restarts and self.state["ActiveState"] == "active":
                self._start()
            return 0, f"Setting up cortexd ({self.version}) ..."
        raise AssertionError(f"unexpected command {argv}")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def write_plan(tmp_path: Path) -> Path:
    plan = {
        "id": "20261204-120000",
        "package": "cortexd",
        "from": OLD,
        "to": NEW,
        "new_deb": "/var/lib/cortex/updates/releases/cortexd_0.2.0_amd64.deb",
        "kept_deb": "/var/lib/cortex/snapshots/x/debs/kept/cortexd_0.1.0_amd64.deb",
        "service": "cortexd.service",
        "socket_unit": "cortexd.socket",
        "socket": "/run/cortex.sock",
        "daemon_pid": 100,
        "apt_command": ["apt-get"],
        "start_timeout": 30.0,
        "state": "scheduled",
        "log_tail": [],
    }
    path = tmp_path / "system-apply.json"
    path.write_text(json.dumps(plan))
    return path


def run(tmp_path: Path, host: Host, ping: Any = lambda _: True) -> tuple[int, dict[str, Any]]:
    path = write_plan(tmp_path)
    clock = Clock()
    code = installer.main([str(path)], runner=host, ping=ping, clock=clock, sleep=clock.sleep)
    return code, json.loads(path.read_text())


def test_a_new_version_that_starts_and_answers_is_kept(tmp_path: Path) -> None:
    host = Host()
    code, plan = run(tmp_path, host)
    assert code == 0
    assert plan["state"] == "finished" and plan["outcome"] == "updated"
    assert host.version == NEW and host.pid == 200
    assert not [c for c in host.calls if "restart" in c], "postinst restarted it already"
    assert "Setting up cortexd (0.2.0) ..." in plan["log_tail"]


def test_a_daemon_the_package_did_not_restart_is_restarted_through_systemd(
    tmp_path: Path,
) -> None:
    host = Host(postinst_restarts=False)  # a policy-rc.d said no
    code, plan = run(tmp_path, host)
    assert code == 0 and plan["outcome"] == "updated"
    assert "systemctl restart cortexd.service" in host.calls


def test_a_failed_start_rolls_back_to_the_kept_deb(tmp_path: Path) -> None:
    host = Host(new_starts=False)
    code, plan = run(tmp_path, host)
    assert code == 1
    assert plan["outcome"] == "rolled back"
    assert "activating/auto-restart (exit-code)" in plan["failure"]
    assert host.version == OLD and host.state["ActiveState"] == "active"
    kept = [c for c in host.calls if c.startswith("apt-get") and "kept" in c]
    assert kept and "--allow-downgrades" in kept[0]
    assert host.calls.index("systemctl reset-failed cortexd.service cortexd.socket") < (
        host.calls.index(kept[0])
    )
    assert "systemctl start cortexd.socket" in host.calls


def test_a_daemon_that_never_answers_is_rolled_back_after_the_deadline(tmp_path: Path) -> None:
    host = Host()
    # The new version runs but never answers on the socket; the old one does.
    code, plan = run(tmp_path, host, ping=lambda _: host.version == OLD)
    assert code == 1
    assert "did not answer on /run/cortex.sock within 30s" in plan["failure"]
    assert plan["outcome"] == "rolled back"


def test_a_rollback_that_fails_is_reported_as_such(tmp_path: Path) -> None:
    host = Host(new_starts=False)
    host.kept_install_fails = True
    code, plan = run(tmp_path, host)
    assert code == 1
    assert plan["outcome"] == "rollback failed"
    assert "reinstalling cortexd_0.1.0_amd64.deb failed (exit 100)" in plan["rollback_problem"]
    assert "E: dpkg was interrupted" in plan["log_tail"]


@pytest.mark.parametrize(
    ("state", "failed"),
    [
        ({"ActiveState": "active", "SubState": "running", "Result": "success"}, False),
        ({"ActiveState": "activating", "SubState": "start", "Result": "success"}, False),
        ({"ActiveState": "failed", "SubState": "failed", "Result": "exit-code"}, True),
        ({"ActiveState": "activating", "SubState": "auto-restart", "Result": "exit-code"}, True),
        ({"ActiveState": "active", "SubState": "running", "Result": "watchdog"}, True),
    ],
)
def test_what_counts_as_a_failed_start(state: dict[str, str], failed: bool) -> None:
    assert installer.start_failed(state) is failed
