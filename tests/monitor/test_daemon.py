"""The monitor in the real daemon: a real tmpfs filled past its thresholds.

Needs root to mount the tmpfs; it drives `disk_space` WARN → FAIL → PASS and
follows its single alert over the socket and through `cortexctl doctor`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cortexctl.cli import main as cortexctl
from cortexd.config.schema import ChecksConfig
from tests.daemon import DaemonProcess, running_daemon

TMPFS_BYTES = 4 * 1024 * 1024
DEADLINE = 30.0
ALL_CHECKS = [f.name for f in dataclasses.fields(ChecksConfig)]

pytestmark = pytest.mark.root


def only(check_id: str, **settings: Any) -> dict[str, Any]:
    """A checks section with every check but `check_id` disabled."""
    checks: dict[str, Any] = {name: {"enabled": False} for name in ALL_CHECKS}
    checks[check_id] = settings
    return {"checks": checks}


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value}")
        time.sleep(0.05)


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="cxfs", dir="/tmp"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(where)],
        check=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(mount: Path, percent: float) -> None:
    """Make the filesystem about `percent` full (rewrites one file)."""
    st = os.statvfs(mount)
    total = st.f_blocks * st.f_frsize
    target = int(total * percent / 100)
    with open(mount / "ballast", "wb") as fh:
        fh.write(b"\0" * target)


def doctor(d: DaemonProcess, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cortexctl(["--socket", d.socket_path, "doctor", *args], stdout=out)
    return code, out.getvalue()


def mount_alerts(d: DaemonProcess, mount: Path) -> list[dict[str, Any]]:
    found = d.call("alerts.list", {"state": "all", "include_cleared": True})["alerts"]
    return [a for a in found if a["labels"].get("mountpoint") == str(mount)]


def test_a_filled_tmpfs_raises_one_alert_that_escalates_is_acked_and_resolves(
    tmpfs: Path,
) -> None:
    config = only("disk_space", include=[str(tmpfs)], interval_seconds=0.2)
    with running_daemon(config) as d:
        status_of = lambda: {  # noqa: E731
            i["mountpoint"]: i["status"] for i in d.call("health")["disks"]
        }
        poll(status_of, lambda s: s.get(str(tmpfs)) == "PASS", "the empty tmpfs to PASS")
        assert doctor(d, "--check", "disk_space")[0] == 0

        fill(tmpfs, 85)
        (warning,) = poll(
            lambda: mount_alerts(d, tmpfs),
            lambda a: len(a) == 1 and a[0]["severity"] == "WARNING",
            "a WARNING alert",
        )
        assert warning["state"] == "firing"
        assert warning["category"] == "disk_usage"
        code, text = doctor(d, "--check", "disk_space")
        assert code == 1, text
        assert text.startswith("DOCTOR WARNING")

        fill(tmpfs, 95)
        (critical,) = poll(
            lambda: mount_alerts(d, tmpfs),
            lambda a: len(a) == 1 and a[0]["severity"] == "CRITICAL",
            "the alert to escalate",
        )
        assert critical["id"] == warning["id"]
        assert doctor(d, "--check", "disk_space")[0] == 2
        status = d.call("status")["components"]
        assert status["alerts"]["active_by_severity"]["CRITICAL"] >= 1
        assert status["monitor"]["state"] == "running"

        # The seed's spelling, with its param name.
        acked = d.call("acknowledge_alert", {"alert_id": critical["id"]})
        assert acked == {"acknowledged": [critical["id"]]}
        firing = d.call("alerts")["alerts"]
        assert critical["id"] not in [a["id"] for a in firing]

        (tmpfs / "ballast").unlink()
        (resolved,) = poll(
            lambda: mount_alerts(d, tmpfs),
            lambda a: len(a) == 1 and a[0]["state"] == "resolved",
            "the alert to resolve",
        )
        assert resolved["id"] == warning["id"]
        assert resolved["acknowledged_at"] is not None  # the record keeps who acknowledged
        assert resolved["count"] >= 2
        assert doctor(d, "--check", "disk_space")[0] == 0


def test_doctor_lists_every_check_with_an_honest_status() -> None:
    config = {
        "checks": {
            "dns_resolution": {"targets": ["localhost"]},
            "network_connectivity": {"targets": []},
            "cve_scan": {"data_path": ""},
        }
    }
    with running_daemon(config) as d:
        out = io.StringIO()
        code = cortexctl(["--socket", d.socket_path, "--json", "doctor"], stdout=out)
        report = orjson.loads(out.getvalue())
        by_id = {r["check_id"]: r for r in report["results"]}
        assert set(by_id) == set(ALL_CHECKS)
        assert report["exit_code"] == code
        assert code in (0, 1, 2)  # no ERROR on this machine
        if not os.path.isdir("/run/systemd/system"):
            assert by_id["systemd_failed"]["status"] == "SKIP"
        if not os.path.exists("/usr/bin/debsecan"):
            assert by_id["cve_scan"]["status"] == "SKIP"
        assert by_id["dns_resolution"]["status"] == "PASS"
        out = io.StringIO()
        assert cortexctl(["--socket", d.socket_path, "health"], stdout=out) == 0
        shown = out.getvalue()
        assert "memory" in shown and "disk /" in shown
        listed = d.call("checks.list")["checks"]
        assert [c["id"] for c in listed] == ALL_CHECKS
        packages = d.call("checks.run", {"category": "network"})["results"]
        assert {r["check_id"] for r in packages} == {"dns_resolution", "network_connectivity"}
