"""Self-healing in the real daemon on this machine, where PID 1 is not systemd:
the feature says it is unavailable instead of pretending, and the daemon serves."""

from __future__ import annotations

import io

import orjson

from cortexctl.cli import main as cortexctl
from tests.daemon import running_daemon


def test_healing_reports_itself_unavailable_without_systemd() -> None:
    with running_daemon({"healing": {"enabled": True}}) as daemon:
        listed = daemon.call("healing.list")
        assert listed["state"] == "unavailable"
        assert "systemd is not PID 1" in listed["reason"]
        assert listed["entries"] == []
        assert daemon.call("status")["components"]["healing"]["state"] == "unavailable"
        out = io.StringIO()
        assert cortexctl(["--socket", daemon.socket_path, "healing", "log"], stdout=out) == 0
        assert "self-healing: UNAVAILABLE (systemd is not PID 1" in out.getvalue()
        out = io.StringIO()
        args = ["--socket", daemon.socket_path, "--json", "healing", "log", "--unit", "nginx"]
        assert cortexctl(args, stdout=out) == 0
        assert orjson.loads(out.getvalue())["state"] == "unavailable"
