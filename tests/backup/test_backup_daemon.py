"""Backup and restore through the real daemon and the real CLI.

Backups are taken while another client keeps raising alerts; the archive is
restored into a daemon with a fresh state directory, whose database must pass
PRAGMA integrity_check and hold every alert raised before the backup began.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from cortexd.protocol import CortexError
from tests.daemon import DaemonProcess, running_daemon

WAIT = 60.0


def cortexctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", daemon.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def raise_alert(daemon: DaemonProcess, n: int) -> str:
    alert = daemon.call(
        "alerts.raise", {"title": f"job {n} failed", "labels": {"job": str(n)}, "source": "test"}
    )["alert"]
    return str(alert["id"])


def alert_ids(daemon: DaemonProcess) -> set[str]:
    found = daemon.call("alerts.list", {"state": "all", "limit": 10000})["alerts"]
    return {a["id"] for a in found if a["source"] == "test"}


def test_backup_while_writing_then_restore_into_a_fresh_daemon(tmp_path: Path) -> None:
    archive = tmp_path / "cortex.tar.gz"
    with running_daemon() as source:
        before = {raise_alert(source, n) for n in range(40)}
        during: list[str] = []
        stop = threading.Event()

        def keep_writing() -> None:
            n = 1000
            while not stop.is_set():
                during.append(raise_alert(source, n))
                n += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            done = cortexctl(source, "backup", str(archive))
        finally:
            stop.set()
            writer.join()
        assert done.returncode == 0, done.stderr
        assert "backup written to" in done.stdout
        assert during, "no alert was written while the backup ran"
        assert archive.stat().st_mode & 0o777 == 0o600

    with running_daemon() as target:
        assert alert_ids(target) == set()
        raise_alert(target, 99999)  # state that the restore replaces
        # Another daemon's archive (its own host key signed it): root must say so.
        done = cortexctl(target, "restore", str(archive), "-y")
        assert done.returncode == 1
        assert "signed with another daemon's key" in done.stderr
        assert "--foreign" in done.stderr
        assert alert_ids(target) == {raise_alert(target, 99999)}
        done = cortexctl(target, "restore", str(archive), "--foreign", "-y")
        assert done.returncode == 0, done.stderr
        assert "restored: alerts.db" in done.stdout
        restored = alert_ids(target)
        assert before <= restored
        assert restored <= before | set(during)
        # The state the restore replaced was backed up first.
        kept = list((Path(target.state_dir) / "backups").glob("pre-restore-*.tar.gz"))
        assert len(kept) == 1
        # The daemon keeps working on the restored database.
        new = raise_alert(target, 5)
        assert new in alert_ids(target)
        # The notifier let go of its database for the swap and took it back.
        assert "notify.db" in done.stdout and "repair.db" in done.stdout
        assert target.call("notify.history", {"since": 0})["notifications"] is not None
        assert target.call("status")["components"]["notify"]["state"] == "running"
        # The daemon holds its databases exclusively: look inside once it has stopped.
        assert target.stop() == 0
        db = Path(target.state_dir) / "alerts.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()


def test_damaged_archives_are_refused_and_nothing_changes(tmp_path: Path) -> None:
    archive = tmp_path / "good.tar.gz"
    with running_daemon() as daemon:
        raise_alert(daemon, 1)
        assert cortexctl(daemon, "backup", str(archive)).returncode == 0
        raise_alert(daemon, 2)
        current = alert_ids(daemon)

        truncated = tmp_path / "truncated.tar.gz"
        truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
        tampered = tmp_path / "tampered.tar.gz"
        with tarfile.open(archive) as tin, tarfile.open(tampered, "w:gz") as tout:
            for member in tin:
                data = tin.extractfile(member).read()  # type: ignore[union-attr]
                if member.name == "state/alerts.db":
                    data = data.replace(b"job 1 failed", b"job 1 LOOKS OK")
                tout.addfile(member, io.BytesIO(data))
        foreign = tmp_path / "foreign.tar.gz"
        with tarfile.open(foreign, "w:gz") as tout:
            tout.add(str(truncated), arcname="something.bin")
        for bad, reason in (
            (truncated, "corrupt or truncated"),
            (tampered, "checksum mismatch"),
            (foreign, "not a cortex backup"),
        ):
            done = cortexctl(daemon, "restore", str(bad), "-y")
            assert done.returncode == 1, done.stdout
            assert "backup archive refused" in done.stderr
            assert reason in done.stderr
            assert alert_ids(daemon) == current
        assert not list((Path(daemon.state_dir) / "backups").glob("pre-restore-*"))


def test_restore_with_config_puts_the_file_back_and_reloads(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    with running_daemon({"alerts": {"coalesce_seconds": 17}}) as daemon:
        original = Path(daemon.config_path).read_text()
        assert cortexctl(daemon, "backup", str(archive)).returncode == 0
        Path(daemon.config_path).write_text(original.replace("17", "42"))
        daemon.call("config.reload")
        assert (
            daemon.call("config.get", {"section": "alerts"})["config"]["alerts"]["coalesce_seconds"]
            == 42
        )
        done = cortexctl(daemon, "restore", str(archive), "--config", "-y")
        assert done.returncode == 0, done.stderr
        assert Path(daemon.config_path).read_text() == original
        assert (
            daemon.call("config.get", {"section": "alerts"})["config"]["alerts"]["coalesce_seconds"]
            == 17
        )


def test_backup_refuses_to_replace_a_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    existing = tmp_path / "exists"
    existing.write_text("keep me")
    done = cortexctl(daemon, "backup", str(existing))
    assert done.returncode == 1
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize(
    ("method", "params", "bad"),
    [
        ("backup.create", {"path": "/tmp/x"}, "path"),
        ("restore.begin", {}, "size"),
        ("restore.begin", {"size": 0, "sha256": "0" * 64}, "size"),
        ("restore.begin", {"size": 10, "sha256": "xyz"}, "sha256"),
        ("restore.begin", {"size": "10", "sha256": "0" * 64}, "size"),
        ("restore.upload", {"offset": 0, "data": ""}, "upload_id"),
        ("restore.upload", {"upload_id": "u", "offset": -1, "data": ""}, "offset"),
        ("restore.upload", {"upload_id": "u", "offset": 0}, "data"),
        ("restore.commit", {}, "upload_id"),
        ("restore.commit", {"upload_id": "u", "config": "yes"}, "config"),
    ],
)
def test_bad_params_name_the_param(
    daemon: DaemonProcess, method: str, params: dict[str, Any], bad: str
) -> None:
    with pytest.raises(CortexError) as raised:
        daemon.call(method, params)
    assert raised.value.code.name == "INVALID_PARAMS"
    assert bad in raised.value.message


def test_upload_protocol_errors(daemon: DaemonProcess) -> None:
    with pytest.raises(CortexError) as raised:
        daemon.call("restore.upload", {"upload_id": "nope", "offset": 0, "data": ""})
    assert raised.value.code.name == "NOT_FOUND"
    with daemon.client() as client:
        begun = client.call("restore.begin", {"size": 3, "sha256": "0" * 64})
        with pytest.raises(CortexError) as raised:
            client.call("restore.begin", {"size": 3, "sha256": "0" * 64})
        assert raised.value.code.name == "BUSY"
        upload = {"upload_id": begun["upload_id"], "offset": 0}
        with pytest.raises(CortexError, match="not base64"):
            client.call("restore.upload", {**upload, "data": "***"})
        with pytest.raises(CortexError, match="more bytes"):
            client.call("restore.upload", {**upload, "data": "AAAAAAAAAAAA"})
        client.call("restore.upload", {**upload, "data": "AAAA"})
        with pytest.raises(CortexError, match="do not match the sha256"):
            client.call("restore.commit", {"upload_id": begun["upload_id"]})
    assert os.listdir(Path(daemon.state_dir) / "backups" / "tmp") == []
