"""`cortexctl doctor --fix` against the real daemon: a stale apt lock under a temp root
and a world-writable file under a temp /etc/cortex are planned, applied, re-checked
and recorded."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from cortexctl.cli import main as cortexctl
from cortexd.config.schema import ChecksConfig
from cortexd.host import failed_units, run_command, systemd_is_pid1
from cortexd.protocol import CortexError
from tests.daemon import DaemonProcess, running_daemon

ALL_CHECKS = [f.name for f in dataclasses.fields(ChecksConfig)]
OURS = ("apt_locks", "cortex_world_writable", "cortex_permissions")


def ctl(daemon: DaemonProcess, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cortexctl(["--socket", daemon.socket_path, *args], stdout=out)
    return code, out.getvalue()


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A temp root with a stale dpkg lock and a world-writable Cortex config file."""
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/lock").write_text("31337\n")
    (tmp_path / "var/lib/dpkg/lock-frontend").touch()
    etc = tmp_path / "etc/cortex"
    etc.mkdir(parents=True)
    (etc / "notify.yaml").write_text("channels: []\n")
    os.chmod(etc / "notify.yaml", 0o646)
    return tmp_path


@pytest.fixture
def daemon(host: Path) -> Iterator[DaemonProcess]:
    checks: dict[str, Any] = {name: {"enabled": False} for name in ALL_CHECKS}
    checks.update({name: {} for name in OURS})
    config = {
        "checks": checks,
        "repair": {
            "root": str(host),
            "config_dir": str(host / "etc/cortex"),
            "runtime_dir": str(host / "run/cortex"),
        },
    }
    with running_daemon(config) as d:
        yield d


def test_doctor_fix_plans_then_applies_with_yes(daemon: DaemonProcess, host: Path) -> None:
    lock = host / "var/lib/dpkg/lock"
    loose = host / "etc/cortex/notify.yaml"

    code, text = ctl(daemon, "doctor", "--fix")
    assert code == 2, text  # a FAIL remains: nothing was applied
    assert "clear_apt_locks (safe): remove 1 stale lock file(s)" in text
    assert f"remove {lock}" in text
    assert "remove_world_write (safe)" in text
    assert f"chmod 0644 {loose}" in text
    assert "dry run: nothing changed" in text
    assert lock.exists()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o646

    code, text = ctl(daemon, "doctor", "--fix", "--yes")
    assert code == 0, text
    assert "clear_apt_locks: ok" in text
    assert "re-checking:" in text
    assert "DOCTOR OK" in text
    assert not lock.exists()
    assert (host / "var/lib/dpkg/lock-frontend").exists()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o644

    runs = daemon.call("fixes.history")["runs"]
    assert {r["fix_id"] for r in runs} == {"clear_apt_locks", "remove_world_write"}
    assert all(r["ok"] and r["verified"] for r in runs)
    assert all(r["requested_by"].startswith("uid ") for r in runs)
    alerts = daemon.call("alerts.list", {"severity": "INFO"})["alerts"]
    titles = {a["title"] for a in alerts if a["source"] == "repair"}
    assert titles == {"fix clear_apt_locks applied", "fix remove_world_write applied"}
    try:
        exposition = daemon.call("metrics")["text"]
    except CortexError as exc:
        assert exc.code.name == "METHOD_NOT_FOUND"
        return  # a daemon built without the metrics capability
    assert 'cortex_repairs_total{fix="clear_apt_locks",result="ok"} 1.0' in exposition
    assert 'cortex_repairs_total{fix="remove_world_write",result="ok"} 1.0' in exposition


def test_doctor_fix_json_reports_plans_and_the_recheck(daemon: DaemonProcess) -> None:
    code, text = ctl(daemon, "--json", "doctor", "--fix", "--yes")
    body = orjson.loads(text)
    assert code == body["exit_code"] == 0
    assert {f["plan"]["fix_id"] for f in body["fixes"]} == {
        "clear_apt_locks",
        "remove_world_write",
    }
    assert {r["status"] for r in body["after"]["results"]} <= {"PASS", "SKIP"}
    assert {r["status"] for r in body["checks"]["results"]} >= {"FAIL"}


def test_confirm_fixes_need_confirm_and_unknown_fixes_are_not_found(
    daemon: DaemonProcess,
) -> None:
    with pytest.raises(CortexError) as refused:
        daemon.call("fixes.apply", {"fix_id": "dpkg_configure"})
    assert refused.value.code.name == "PERMISSION_DENIED"
    assert "confirm" in refused.value.message
    with pytest.raises(CortexError) as missing:
        daemon.call("fixes.plan", {"fix_id": "no_such_fix"})
    assert missing.value.code.name == "NOT_FOUND"
    listed = {f["id"]: f["safety"] for f in daemon.call("fixes.list")["fixes"]}
    assert listed["clear_apt_locks"] == "safe"
    assert listed["dpkg_configure"] == "confirm"


def test_repair_commands_plan_by_default(daemon: DaemonProcess, host: Path) -> None:
    code, text = ctl(daemon, "repair", "apt", "--locks")
    assert code == 0, text
    assert "clear_apt_locks (safe): remove 1 stale lock file(s)" in text
    assert (host / "var/lib/dpkg/lock").exists()
    code, text = ctl(daemon, "repair", "permissions", "--cortex", "--yes", "--dry-run")
    assert code == 0, text
    assert stat.S_IMODE((host / "etc/cortex/notify.yaml").stat().st_mode) == 0o646
    code, text = ctl(daemon, "repair", "apt", "--locks", "--yes")
    assert code == 0, text
    assert not (host / "var/lib/dpkg/lock").exists()


def test_services_repair_plans_only_what_this_host_has(daemon: DaemonProcess) -> None:
    # Only a plan (no --yes): nothing is restarted on the host running the suite.
    code, text = ctl(daemon, "repair", "services", "--restart-failed")
    if not systemd_is_pid1():
        assert code == 1
        assert "restart_unit: cannot plan - systemd is not PID 1 on this host" in text
        with pytest.raises(CortexError) as exc:
            daemon.call("fixes.plan", {"fix_id": "restart_unit"})
        assert exc.value.code.name == "UNAVAILABLE"
        return
    assert code == 0, text
    failed = [u["unit"] for u in failed_units(run_command)]
    plan = daemon.call("fixes.plan", {"fix_id": "restart_unit"})["plan"]
    assert [s["unit"] for s in plan["steps"]] == failed
    assert ("no failed units" in text) == (not failed)


def test_check_id_finds_its_fix(daemon: DaemonProcess) -> None:
    plan = daemon.call("fixes.plan", {"check_id": "apt_locks"})["plan"]
    assert plan["fix_id"] == "clear_apt_locks"
    assert plan["steps"][0]["kind"] == "file"


def test_a_reload_moves_the_fixes_to_the_new_paths(daemon: DaemonProcess, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "var/lib/dpkg").mkdir(parents=True)
    (other / "var/lib/dpkg/lock-frontend").write_text("stale\n")
    config = yaml.safe_load(Path(daemon.config_path).read_text())
    config["repair"]["root"] = str(other)
    daemon.write_config(config)
    daemon.call("config.reload")
    plan = daemon.call("fixes.plan", {"fix_id": "clear_apt_locks"})["plan"]
    assert [s["path"] for s in plan["steps"]] == [str(other / "var/lib/dpkg/lock-frontend")]
