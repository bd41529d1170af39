"""Self-healing in the real daemon on the machine the suite runs on.

Healing is on, with an allow-list naming only a unit that does not exist, so
on a host where systemd is PID 1 it never restarts one of the host's units.
Where PID 1 is not systemd, the feature says it is unavailable instead of
pretending; where it is, it runs and has healed nothing. Either way the
daemon serves. Restarts themselves are tested in tests/healing/test_healing.py,
against a stand-in systemctl and runtime directory.
"""

from __future__ import annotations

import io

import orjson

from cortexctl.cli import main as cortexctl
from cortexd.host.systemd import systemd_is_pid1
from tests.daemon import running_daemon

NO_SUCH_UNIT = "cortex-test-no-such-unit.service"


def test_healing_touches_no_unit_of_this_host_and_says_what_it_can_do() -> None:
    config = {"healing": {"enabled": True, "allow": [NO_SUCH_UNIT]}}
    with running_daemon(config) as daemon:
        listed = daemon.call("healing.list")
        assert listed["entries"] == []
        assert listed["healing"] == [] and listed["counts"]["attempts"] == 0
        state = daemon.call("status")["components"]["healing"]["state"]
        out = io.StringIO()
        assert cortexctl(["--socket", daemon.socket_path, "healing", "log"], stdout=out) == 0
        if systemd_is_pid1():
            assert listed["state"] == state == "running"
            assert listed["reason"] is None
        else:
            assert listed["state"] == state == "unavailable"
            assert "systemd is not PID 1" in listed["reason"]
            assert "self-healing: UNAVAILABLE (systemd is not PID 1" in out.getvalue()
        out = io.StringIO()
        args = ["--socket", daemon.socket_path, "--json", "healing", "log", "--unit", "nginx"]
        assert cortexctl(args, stdout=out) == 0
        assert orjson.loads(out.getvalue())["state"] == listed["state"]
