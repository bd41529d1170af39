"""Restore's guards through the real daemon: the host key, foreign archives, limits, uploads.

Everything here runs as the daemon's own user (root on a root machine); the
same guards against a member of the admin group, a real account, are in
tests/security/.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from cortexctl.client import Client
from cortexd.protocol import CortexError
from tests.daemon import DaemonProcess, running_daemon


def upload(client: Client, data: bytes) -> str:
    """Send `data` as a restore upload; returns its id."""
    begun = client.call("restore.begin", {"size": len(data), "sha256": _sha(data)})
    step = int(begun["chunk_bytes"])
    for offset in range(0, len(data), step):
        chunk = base64.b64encode(data[offset : offset + step]).decode()
        client.call(
            "restore.upload", {"upload_id": begun["upload_id"], "offset": offset, "data": chunk}
        )
    return str(begun["upload_id"])


def backup(client: Client) -> bytes:
    chunks: list[bytes] = []

    def keep(data: Any) -> None:
        if "chunk" in data:
            chunks.append(base64.b64decode(data["chunk"]))

    client.call("backup.create", None, on_stream=keep, timeout=60)
    return b"".join(chunks)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gzip_bomb(size: int) -> bytes:
    """A small archive of our format whose one database decompresses to `size` bytes."""
    data = bytes(size)
    files = [{"name": "state/alerts.db", "size": size, "sha256": _sha(data)}]
    manifest = {"format": "cortex-backup", "version": 2, "files": files}
    manifest["digest"] = _sha(orjson.dumps(files, option=orjson.OPT_SORT_KEYS))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, body in (("manifest.json", orjson.dumps(manifest)), ("state/alerts.db", data)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def test_the_host_key_is_made_on_first_start_and_kept(daemon: DaemonProcess) -> None:
    key_path = Path(daemon.state_dir) / "host.key"
    st = key_path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 32
    key = key_path.read_bytes()
    key_id = daemon.call("status")["components"]["backup"]["host_key"]
    assert len(key_id) == 16
    assert key_id not in key.hex(), "the status shows a name of the key, never the key"


def test_roots_own_archive_carries_the_key_and_restores_without_foreign(
    daemon: DaemonProcess,
) -> None:
    with daemon.client(timeout=60) as client:
        data = backup(client)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert (
                tar.extractfile("key/host.key").read()
                == (  # type: ignore[union-attr]
                    Path(daemon.state_dir) / "host.key"
                ).read_bytes()
            )
        result = client.call("restore.commit", {"upload_id": upload(client, data)}, timeout=60)
    assert result["signed_by_this_host"] is True


def test_a_gzip_bomb_is_refused_at_the_limit_and_the_daemon_goes_on() -> None:
    bomb = gzip_bomb(256 << 20)
    assert len(bomb) < 1 << 20
    with running_daemon({"backup": {"max_restore_bytes": 8 << 20}}) as daemon:
        tmp = Path(daemon.state_dir) / "backups" / "tmp"
        with daemon.client(timeout=60) as client:
            # Unsigned: refused before a byte is extracted, even for root...
            with pytest.raises(CortexError, match="foreign: true") as refused:
                client.call("restore.commit", {"upload_id": upload(client, bomb)}, timeout=60)
            assert refused.value.code.name == "INVALID_PARAMS"
            # ...and with foreign: true, refused by the limit.
            started = time.monotonic()
            with pytest.raises(CortexError, match=r"backup.max_restore_bytes \(8388608\)") as big:
                client.call(
                    "restore.commit",
                    {"upload_id": upload(client, bomb), "foreign": True},
                    timeout=60,
                )
            assert big.value.code.name == "INVALID_PARAMS"
            assert time.monotonic() - started < 10
        assert os.listdir(tmp) == []
        assert not list((Path(daemon.state_dir) / "backups").glob("pre-restore-*"))
        assert daemon.call("ping")["pong"] is True


def test_restore_abort_ends_an_upload_and_frees_the_slot(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        first = client.call("restore.begin", {"size": 10, "sha256": "0" * 64})
        with pytest.raises(CortexError) as busy:
            client.call("restore.begin", {"size": 10, "sha256": "0" * 64})
        assert busy.value.code.name == "BUSY"
        assert "restore.abort" in busy.value.message
        assert busy.value.data["upload_id"] == first["upload_id"]
        aborted = client.call("restore.abort", {"upload_id": first["upload_id"]})
        assert aborted == {"aborted": first["upload_id"], "owner_uid": os.getuid(), "received": 0}
        with pytest.raises(CortexError) as gone:
            client.call("restore.abort", {"upload_id": first["upload_id"]})
        assert gone.value.code.name == "NOT_FOUND"
        second = client.call("restore.begin", {"size": 10, "sha256": "0" * 64})
        client.call("restore.abort", {"upload_id": second["upload_id"]})
    assert os.listdir(Path(daemon.state_dir) / "backups" / "tmp") == []


def test_an_idle_upload_expires_when_the_next_one_begins() -> None:
    with running_daemon({"backup": {"upload_idle_seconds": 1}}) as daemon, daemon.client() as c:
        abandoned = c.call("restore.begin", {"size": 10, "sha256": "0" * 64})
        time.sleep(1.5)
        fresh = c.call("restore.begin", {"size": 10, "sha256": "0" * 64})
        assert fresh["upload_id"] != abandoned["upload_id"]
        with pytest.raises(CortexError) as gone:
            c.call("restore.upload", {"upload_id": abandoned["upload_id"], "offset": 0, "data": ""})
        assert gone.value.code.name == "NOT_FOUND"
