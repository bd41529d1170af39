"""The update module through the real daemon: check, snapshot, rollback, apply.

apt is never allowed to change this machine: the deterministic cases inject
`updates.apt_command` with a stand-in that prints canned apt output and
records its arguments; the one case with the real apt runs the simulation
only (`apt-get -s`). dpkg-query is the real one (it only reads).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cortexd.monitor.checks.packages import parse_simulation
from cortexd.protocol import CortexError
from tests.cortexctl.terminal import CORTEXCTL, on_terminal
from tests.daemon import DaemonProcess, running_daemon
from tests.metrics.helpers import promtool, sample

WAIT = 60.0
SIMULATION = """\
Reading package lists...
Inst openssl [3.0.11-1~deb12u1] (3.0.15-1~deb12u2 Debian-Security:12/stable-security [amd64])
Inst libfoo1 [1.0-1] (1.0-2 Debian:12.8/stable [amd64])
Inst cortex-fake-tool [2.0] (2.1 Debian:12.8/stable [all])
Conf openssl (3.0.15-1~deb12u2 Debian-Security:12/stable-security [amd64])
"""
FAKE_APT = """#!{python}
import os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.log"), "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if "update" in args:
    print("Hit:1 http://deb.example stable InRelease")
    sys.exit(0)
if "dist-upgrade" in args:
    sys.stdout.write(open(os.path.join(here, "simulation.txt")).read())
    sys.exit(0)
if "--allow-downgrades" in args or ("install" in args and "--only-upgrade" not in args):
    for deb in args[args.index("install") + 1:]:
        print("Inst " + os.path.basename(deb) + (" (simulated)" if "-s" in args else ""))
    sys.exit(0)
if "-s" in args:
    for name in args[args.index("--only-upgrade") + 1:]:
        print("Inst " + name + " (simulated)")
    sys.exit(0)
while os.path.exists(os.path.join(here, "hold")):
    time.sleep(0.05)
for name in args[args.index("--only-upgrade") + 1:]:
    print("Setting up " + name + " ...")
code = int(open(os.path.join(here, "exit_code")).read() or 0)
if code:
    print("E: Sub-process /usr/bin/dpkg returned an error code (1)")
sys.exit(code)
"""


class FakeApt:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.command = root / "apt-get"
        self.command.write_text(FAKE_APT.format(python=sys.executable))
        self.command.chmod(self.command.stat().st_mode | stat.S_IXUSR)
        (root / "simulation.txt").write_text(SIMULATION)
        (root / "exit_code").write_text("0")
        lists = root / "lists"
        lists.mkdir()
        (lists / "deb.example_dists_stable_InRelease").write_text("")
        self.lists = lists

    def calls(self) -> list[str]:
        log = self.root / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def config(self) -> dict[str, Any]:
        return {"updates": {"apt_command": [str(self.command)], "apt_lists_dir": str(self.lists)}}


@pytest.fixture
def apt(tmp_path: Path) -> FakeApt:
    return FakeApt(tmp_path)


@pytest.fixture
def daemon_with_apt(apt: FakeApt) -> Iterator[DaemonProcess]:
    with running_daemon(apt.config()) as daemon:
        yield daemon


def cortexctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", daemon.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_check_splits_security_and_caches(daemon_with_apt: DaemonProcess, apt: FakeApt) -> None:
    daemon = daemon_with_apt
    result = daemon.call("updates.check", timeout=WAIT)
    assert result["available"] and not result["cached"]
    assert result["counts"] == {"total": 3, "security": 1}
    assert result["security"] == [
        {
            "package": "openssl",
            "from": "3.0.11-1~deb12u1",
            "to": "3.0.15-1~deb12u2",
            "origin": "Debian-Security:12/stable-security",
            "security": True,
        }
    ]
    assert [u["package"] for u in result["upgrades"]] == ["libfoo1", "cortex-fake-tool"]
    assert result["reboot_required"] in (True, False)
    assert 0 <= result["lists_age_seconds"] < 600
    simulations = sum("dist-upgrade" in c for c in apt.calls())
    assert simulations == 1

    again = daemon.call("updates.check")
    assert again["cached"] is True
    assert sum("dist-upgrade" in c for c in apt.calls()) == 1

    human = cortexctl(daemon, "update", "check", "--force")
    assert human.returncode == 0, human.stderr
    assert "System Update" in human.stdout
    assert "openssl  3.0.11-1~deb12u1 → 3.0.15-1~deb12u2" in human.stdout
    assert "3 package update(s) available" in human.stdout
    assert "1 security update(s)" in human.stdout
    assert any(c.endswith("update") for c in apt.calls())
    assert sum("dist-upgrade" in c for c in apt.calls()) == 2


@pytest.mark.slow
def test_check_with_the_real_apt_matches_its_simulation() -> None:
    if shutil.which("apt-get") is None or not os.listdir("/var/lib/apt/lists"):
        pytest.skip("no apt or no package lists here")
    with running_daemon() as daemon:
        result = daemon.call("updates.check", timeout=WAIT * 5)
    done = subprocess.run(
        ["apt-get", "-o", "Debug::NoLocking=1", "-s", "-q", "dist-upgrade"],
        capture_output=True,
        text=True,
        timeout=WAIT * 5,
        check=True,
    )
    expected = parse_simulation(done.stdout)
    assert result["counts"]["total"] == len(expected)
    assert result["counts"]["security"] == sum(u.security for u in expected)
    shown = {u["package"] for u in result["upgrades"] + result["security"]}
    assert shown == {u.package for u in expected}


def test_snapshot_then_rollback_restores_config_and_keeps_alerts(
    daemon_with_apt: DaemonProcess,
) -> None:
    daemon = daemon_with_apt
    config = Path(daemon.config_path)
    original = config.read_bytes()
    daemon.call("alerts.raise", {"title": "before the snapshot", "labels": {"n": "1"}})
    snap = daemon.call("updates.snapshot", timeout=WAIT)["snapshot"]
    assert len(snap["id"]) == 15 and snap["id"][8] == "-"
    assert snap["databases"] and "alerts.db" in snap["databases"]
    assert snap["packages"] > 10

    config.write_bytes(
        original.replace(b"state_dir", b"alerts:\n  coalesce_seconds: 42\nstate_dir")
    )
    daemon.call("config.reload")
    assert (
        daemon.call("config.get", {"section": "alerts"})["config"]["alerts"]["coalesce_seconds"]
        == 42
    )
    daemon.call("alerts.raise", {"title": "after the snapshot", "labels": {"n": "2"}})

    listed = cortexctl(daemon, "update", "rollback", "--list")
    assert snap["id"] in listed.stdout
    # It overwrites the configuration: without -y, and no terminal to ask on, it refuses.
    refused = cortexctl(daemon, "update", "rollback", snap["id"])
    assert refused.returncode == 1
    assert "needs confirmation: pass -y" in refused.stderr
    assert config.read_bytes() != original
    done = cortexctl(daemon, "update", "rollback", snap["id"], "-y")
    assert done.returncode == 0, done.stderr
    assert f"rolled back to snapshot {snap['id']}" in done.stdout
    assert "installed packages are as in the snapshot" in done.stdout

    assert config.read_bytes() == original
    assert (
        daemon.call("config.get", {"section": "alerts"})["config"]["alerts"]["coalesce_seconds"]
        == 60
    )
    titles = {a["title"] for a in daemon.call("alerts.list", {"state": "all"})["alerts"]}
    assert {"before the snapshot", "after the snapshot"} <= titles


def test_apply_simulates_unless_confirmed(daemon_with_apt: DaemonProcess, apt: FakeApt) -> None:
    daemon = daemon_with_apt
    frames: list[Any] = []
    with daemon.client(WAIT) as client:
        result = client.call(
            "updates.apply", {"security": True}, on_stream=frames.append, timeout=WAIT
        )
    assert result["simulated"] is True
    assert result["returncode"] == 0
    assert [p["package"] for p in result["packages"]] == ["openssl"]
    assert result["snapshot"] is None
    assert frames[0]["request_id"]
    assert ["Inst openssl (simulated)"] in [f.get("lines") for f in frames]
    upgrades = [c for c in apt.calls() if "--only-upgrade" in c]
    assert len(upgrades) == 1 and " -s " in f" {upgrades[0]} "
    assert daemon.call("updates.snapshots")["snapshots"] == []


def test_confirmed_apply_snapshots_first_and_alerts(
    daemon_with_apt: DaemonProcess, apt: FakeApt
) -> None:
    daemon = daemon_with_apt
    done = cortexctl(daemon, "update", "apply", "--packages", "--only", "libfoo1", "-y")
    assert done.returncode == 0, done.stderr
    assert "Setting up libfoo1 ..." in done.stdout
    assert "applied: libfoo1" in done.stdout
    upgrades = [c for c in apt.calls() if "--only-upgrade" in c]
    assert upgrades[-1].split()[1] == "-y"
    snapshots = daemon.call("updates.snapshots")["snapshots"]
    assert len(snapshots) == 1
    assert snapshots[0]["reason"] == "before update apply"
    assert [d["package"] for d in snapshots[0]["debs"]] == ["libfoo1"]
    alerts = [a for a in daemon.call("alerts.list")["alerts"] if a["source"] == "updates"]
    assert [(a["severity"], a["title"]) for a in alerts] == [
        ("INFO", "1 package update(s) applied")
    ]

    (apt.root / "exit_code").write_text("100")
    failed = cortexctl(daemon, "update", "apply", "--packages", "--security", "-y")
    assert failed.returncode == 1
    alerts = [a for a in daemon.call("alerts.list")["alerts"] if a["source"] == "updates"]
    errors = [a for a in alerts if a["severity"] == "ERROR"]
    assert len(errors) == 1
    assert "exit 100" in errors[0]["title"]
    assert "returned an error code" in errors[0]["description"]
    # Both confirmed runs are counted for Prometheus, by result.
    text = daemon.call("metrics")["text"]
    promtool(text)
    assert sample(text, 'cortex_updates_applied_total{result="success"}') == 1
    assert sample(text, 'cortex_updates_applied_total{result="failure"}') == 1


def test_apply_is_single_flight(daemon_with_apt: DaemonProcess, apt: FakeApt) -> None:
    daemon = daemon_with_apt
    hold = apt.root / "hold"
    hold.write_text("")
    first: dict[str, Any] = {}

    def run() -> None:
        first["result"] = daemon.call("updates.apply", {"confirm": True}, timeout=WAIT)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not any("-y" in c.split() for c in apt.calls()):
            assert time.monotonic() < deadline, "the first apply never started apt"
            time.sleep(0.05)
        with pytest.raises(CortexError) as raised:
            daemon.call("updates.apply", {"confirm": True})
        assert raised.value.code.name == "BUSY"
    finally:
        hold.unlink()
        thread.join(WAIT)
    assert first["result"]["returncode"] == 0


def test_rollback_without_snapshots_is_not_found(daemon_with_apt: DaemonProcess) -> None:
    with pytest.raises(CortexError) as raised:
        daemon_with_apt.call("updates.rollback")
    assert raised.value.code.name == "NOT_FOUND"
    with pytest.raises(CortexError) as raised:
        daemon_with_apt.call("updates.rollback", {"id": "20200101-000000"})
    assert raised.value.code.name == "NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "params", "bad"),
    [
        ("updates.check", {"force": "yes"}, "force"),
        ("updates.check", {"forced": True}, "forced"),
        ("updates.snapshot", {"id": "x"}, "id"),
        ("updates.snapshots", {"all": True}, "all"),
        ("updates.rollback", {"id": "../../etc"}, "id"),
        ("updates.rollback", {"packages": 1}, "packages"),
        ("updates.rollback", {"confirm": "y"}, "confirm"),
        ("updates.apply", {"packages": "openssl"}, "packages"),
        ("updates.apply", {"packages": ["-o Evil=1"]}, "packages"),
        ("updates.apply", {"security": "yes"}, "security"),
        ("updates.apply", {"confirm": 1}, "confirm"),
    ],
)
def test_bad_params_name_the_param(
    daemon: DaemonProcess, method: str, params: dict[str, Any], bad: str
) -> None:
    with pytest.raises(CortexError) as raised:
        daemon.call(method, params)
    assert raised.value.code.name == "INVALID_PARAMS"
    assert bad in raised.value.message


def test_apply_saves_the_replaced_deb_and_rollback_reinstalls_it(
    apt: FakeApt, tmp_path: Path
) -> None:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "netbase"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("netbase is not installed here")
    installed = done.stdout.strip()
    (apt.root / "simulation.txt").write_text(
        f"Inst netbase [{installed}] (99.0 Debian:12.8/stable [all])\n"
    )
    with running_daemon(apt.config()) as daemon:
        applied = cortexctl(daemon, "update", "apply", "--packages", "-y")
        assert applied.returncode == 0, applied.stderr
        snap = daemon.call("updates.snapshots")["snapshots"][0]
        (deb,) = snap["debs"]
        assert deb["package"] == "netbase" and deb["version"] == installed
        assert deb["source"] in ("apt-cache", "dpkg-repack", "rebuilt")
        saved = Path(daemon.state_dir) / "snapshots" / snap["id"] / "debs" / deb["file"]
        assert saved.is_file()

        # Without -y, and no terminal to ask on, nothing happens at all.
        refused = cortexctl(daemon, "update", "rollback", snap["id"], "--packages")
        assert refused.returncode == 1
        assert [c for c in apt.calls() if "--allow-downgrades" in c] == []
        # On a terminal: yes to the configuration, no to the packages: the
        # reinstall is only simulated.
        rollback = ["update", "rollback", snap["id"], "--packages"]
        code, shown = on_terminal(
            [*CORTEXCTL, "--socket", daemon.socket_path, *rollback], answers=["y", "n"]
        )
        assert code == 0, shown
        assert "Overwrite the configuration" in shown
        assert "package reinstall simulated: exit 0" in shown
        reinstall = [c for c in apt.calls() if "--allow-downgrades" in c]
        assert reinstall == [f"-q -s --allow-downgrades install {saved}"]
