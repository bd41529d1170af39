"""`update check --system` and `update apply --system` against a real daemon and cortexctl.

The channel is a real manifest over file:// and over https on 127.0.0.1 (a
server with its own CA); the .debs are tiny real ones named cortexd. apt is
the stand-in of the update tests, so a simulation never reaches this
machine's apt; and a confirmed apply stops at its first refusal here,
because cortexd is not this host's package, or (where it is) this test
daemon is not cortexd.service. The confirmed install, the restart through
systemd and the rollback run in the systemd trial: tests/test_deb_package.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import DaemonProcess, running_daemon
from tests.updates.releases import entry, fake_deb, https_server, self_signed, write_manifest
from tests.updates.test_updates_daemon import FakeApt

WAIT = 120.0
# Higher than any cortexd this host may have, so the channel always offers an update.
NEWER = "9.0.0"


def cortexctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", daemon.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def host_cortexd() -> str | None:
    """The version of cortexd this host has installed as a package, if any."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}\t${db:Status-Abbrev}", "cortexd"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    version, _, status = done.stdout.partition("\t")
    return version if done.returncode == 0 and status.startswith("ii") else None


def releases_dir(daemon: DaemonProcess) -> Path:
    return Path(daemon.state_dir) / "updates" / "releases"


@pytest.fixture
def apt(tmp_path: Path) -> FakeApt:
    root = tmp_path / "apt"
    root.mkdir()
    return FakeApt(root)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    return path


def channel_config(apt: FakeApt, url: str, ca_file: str = "") -> dict[str, Any]:
    config = apt.config()
    config["updates"].update(channel=url, ca_file=ca_file)
    return config


@pytest.fixture
def daemon(apt: FakeApt, site: Path) -> Iterator[DaemonProcess]:
    deb = fake_deb(site, NEWER)
    manifest = write_manifest(site, [entry(deb, NEWER, released="2026-12-01")])
    with running_daemon(channel_config(apt, f"file://{manifest}")) as d:
        yield d


def test_without_a_channel_both_commands_say_so_and_exit_1(apt: FakeApt) -> None:
    with running_daemon(apt.config()) as daemon:
        for args in (("update", "check", "--system"), ("update", "apply", "--system", "-y")):
            done = cortexctl(daemon, *args)
            assert done.returncode == 1
            assert "cortexctl: UNAVAILABLE: no release channel is configured" in done.stderr
            assert "hint: set updates.channel in /etc/cortex/daemon.conf" in done.stderr
        answer = json.loads(cortexctl(daemon, "--json", "update", "check", "--system").stdout)
        assert answer["error"]["data"]["name"] == "UNAVAILABLE"
        assert "updates.channel" in answer["error"]["data"]["hint"]
        assert apt.calls() == []


def test_check_shows_installed_newest_and_newer(daemon: DaemonProcess) -> None:
    answer = json.loads(cortexctl(daemon, "--json", "update", "check", "--system").stdout)
    assert answer["installed"] == host_cortexd()
    assert answer["running"] == daemon.call("version")["version"]
    assert answer["newest"]["version"] == NEWER
    assert answer["newest"]["released"] == "2026-12-01"
    assert answer["newer"] is True
    assert answer["last_apply"] is None
    shown = cortexctl(daemon, "update", "check", "--system")
    assert shown.returncode == 0
    assert f"Newest: {NEWER} (released 2026-12-01)" in shown.stdout
    assert "Newer: Yes" in shown.stdout
    assert f"cortexd {NEWER} is available: sudo cortexctl update apply --system -y" in shown.stdout


def test_an_https_channel_needs_its_ca(apt: FakeApt, site: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    deb = fake_deb(site, NEWER)
    write_manifest(site, [entry(deb, NEWER)])
    with https_server(site, cert, key) as server:
        url = server.url("releases.json")
        with running_daemon(channel_config(apt, url, str(cert))) as daemon:
            answer = json.loads(cortexctl(daemon, "--json", "update", "check", "--system").stdout)
            assert answer["newest"]["url"] == server.url(deb.name)
            simulated = cortexctl(daemon, "update", "apply", "--system")
            assert simulated.returncode == 0, simulated.stderr
            assert "/" + deb.name in server.requests
        with running_daemon(channel_config(apt, url)) as daemon:
            refused = cortexctl(daemon, "update", "check", "--system")
            assert refused.returncode == 1
            assert "certificate is not trusted" in refused.stderr
            assert "updates.ca_file" in refused.stderr
            assert daemon.call("ping")["pong"] is True


def test_a_bad_manifest_is_named_and_the_daemon_serves_on(
    apt: FakeApt, site: Path, tmp_path: Path
) -> None:
    manifest = site / "releases.json"
    manifest.write_text(json.dumps({"versions": [{"version": NEWER, "url": "a.deb"}]}))
    with running_daemon(channel_config(apt, str(manifest))) as daemon:  # a bare path works too
        done = cortexctl(daemon, "update", "check", "--system")
        assert done.returncode == 1
        assert "versions[0].sha256: expected a non-empty string" in done.stderr
        manifest.write_text("{not json")
        assert "not JSON" in cortexctl(daemon, "update", "apply", "--system").stderr
        assert daemon.call("ping")["pong"] is True
        assert apt.calls() == []


def test_apply_without_confirmation_downloads_checks_and_simulates(
    daemon: DaemonProcess, apt: FakeApt, site: Path
) -> None:
    done = cortexctl(daemon, "update", "apply", "--system")
    assert done.returncode == 0, done.stderr
    assert "simulating (apt -s); confirm with -y to install" in done.stdout
    assert f"downloading cortexd {NEWER}" in done.stdout
    assert "SHA-256 verified" in done.stdout
    assert f"simulated: would install cortexd {NEWER}" in done.stdout
    saved = releases_dir(daemon) / f"cortexd_{NEWER}_amd64.deb"
    assert saved.read_bytes() == (site / saved.name).read_bytes()
    assert apt.calls() == [f"-q -s install {saved}"]
    assert daemon.call("updates.snapshots")["snapshots"] == []
    status = daemon.call("status")["components"]["updates"]
    assert status["system_apply"] is None and status["state"] == "running"


def test_a_checksum_mismatch_is_refused_and_nothing_changes(apt: FakeApt, site: Path) -> None:
    deb = fake_deb(site, NEWER)
    manifest = write_manifest(site, [{**entry(deb, NEWER), "sha256": "0" * 64}])
    with running_daemon(channel_config(apt, f"file://{manifest}")) as daemon:
        done = cortexctl(daemon, "update", "apply", "--system")
        assert done.returncode == 1
        assert "is not the manifest's" in done.stderr
        assert "refused, nothing was changed" in done.stderr
        assert list(releases_dir(daemon).iterdir()) == []
        assert apt.calls() == []
        assert daemon.call("updates.snapshots")["snapshots"] == []
        # JSON lines: the stream's phases, then the error.
        lines = cortexctl(daemon, "--json", "update", "apply", "--system").stdout.splitlines()
        answer = json.loads(lines[-1])
        assert answer["error"]["data"]["expected"] == "0" * 64


def test_a_confirmed_apply_outside_a_packaged_service_is_refused(
    daemon: DaemonProcess, apt: FakeApt
) -> None:
    done = cortexctl(daemon, "update", "apply", "--system", "-y")
    assert done.returncode == 1
    if host_cortexd() is None:
        assert "cortexd is not installed as a Debian package here" in done.stderr
        assert "hint: install the .deb first" in done.stderr
    else:  # this host has the package, but this daemon is not its service
        assert "systemd as PID 1" in done.stderr or "cortexd.service" in done.stderr
    assert apt.calls() == []
    assert not releases_dir(daemon).exists() or list(releases_dir(daemon).iterdir()) == []
    assert daemon.call("updates.snapshots")["snapshots"] == []


def test_nothing_newer_is_said_plainly(apt: FakeApt, site: Path) -> None:
    deb = fake_deb(site, "0.0.1")
    manifest = write_manifest(site, [entry(deb, "0.0.1")])
    with running_daemon(channel_config(apt, f"file://{manifest}")) as daemon:
        answer = json.loads(cortexctl(daemon, "--json", "update", "check", "--system").stdout)
        assert answer["newer"] is False
        done = cortexctl(daemon, "update", "apply", "--system", "-y")
        assert done.returncode == 0
        assert "is up to date with the channel" in done.stdout
        assert apt.calls() == []


def test_system_and_packages_are_asked_for_one_at_a_time(daemon: DaemonProcess) -> None:
    assert cortexctl(daemon, "update", "apply").returncode == 2
    assert cortexctl(daemon, "update", "apply", "--packages", "--system").returncode == 2
    both = cortexctl(daemon, "update", "apply", "--system", "--security")
    assert both.returncode == 2 and "--packages" in both.stderr
