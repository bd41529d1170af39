"""The archive format: a real SQLite database copied online, verified, refused when damaged."""

from __future__ import annotations

import io
import sqlite3
import tarfile
import threading
from pathlib import Path

import orjson
import pytest

from cortexd.backup.archive import ArchiveRejected, ArchiveTooLarge, build, verify


def make_state(state: Path, rows: int = 100) -> None:
    state.mkdir()
    conn = sqlite3.connect(state / "alerts.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    conn.commit()
    conn.close()


def test_round_trip_with_config(tmp_path: Path) -> None:
    make_state(tmp_path / "state")
    conf = tmp_path / "daemon.conf"
    conf.write_text("alerts:\n  max_active: 7\n")
    target = tmp_path / "b.tar.gz"
    manifest = build(str(target), str(tmp_path / "state"), [str(conf)], max_bytes=1 << 30)
    assert [f["name"] for f in manifest["files"]] == ["state/alerts.db", "config/0"]
    assert manifest["files"][1]["origin"] == str(conf)
    assert target.stat().st_mode & 0o777 == 0o600

    staging = tmp_path / "staging"
    verified = verify(str(target), str(staging))
    assert verified["digest"] == manifest["digest"]
    assert (staging / "config/0").read_text() == conf.read_text()
    conn = sqlite3.connect(staging / "state/alerts.db")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    conn.close()


def test_copy_is_consistent_while_another_connection_writes(tmp_path: Path) -> None:
    make_state(tmp_path / "state", rows=0)
    stop = threading.Event()

    def writer() -> None:
        conn = sqlite3.connect(tmp_path / "state" / "alerts.db", timeout=30)
        i = 0
        while not stop.is_set():
            conn.execute("INSERT INTO t (v) VALUES (?)", (f"w{i}",))
            conn.commit()
            i += 1
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for n in range(3):
            target = tmp_path / f"b{n}.tar.gz"
            build(str(target), str(tmp_path / "state"), [], max_bytes=1 << 30)
            staging = tmp_path / f"s{n}"
            verify(str(target), str(staging))  # includes PRAGMA integrity_check
            conn = sqlite3.connect(staging / "state/alerts.db")
            ids = [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]
            conn.close()
            # A consistent copy holds a gap-free prefix of the committed rows.
            assert ids == list(range(1, len(ids) + 1))
    finally:
        stop.set()
        thread.join()


def _rewrite(source: Path, target: Path, edit: dict[str, bytes | None]) -> None:
    """Copy an archive, replacing (or with None dropping) named members."""
    with tarfile.open(source, "r:gz") as tin, tarfile.open(target, "w:gz") as tout:
        for member in tin:
            data = tin.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in edit:
                replacement = edit[member.name]
                if replacement is None:
                    continue
                data = replacement
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    make_state(tmp_path / "state")
    target = tmp_path / "good.tar.gz"
    build(str(target), str(tmp_path / "state"), [], max_bytes=1 << 30)
    return target


def test_truncated_archive_is_refused(archive: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ArchiveRejected, match="corrupt or truncated"):
        verify(str(cut), str(tmp_path / "s"))


def test_tampered_database_is_refused(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        db = bytearray(tar.extractfile("state/alerts.db").read())  # type: ignore[union-attr]
    db[-100] ^= 0xFF
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {"state/alerts.db": bytes(db)})
    with pytest.raises(ArchiveRejected, match="checksum mismatch"):
        verify(str(bad), str(tmp_path / "s"))


def test_edited_manifest_is_refused(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        manifest = orjson.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    manifest["files"][0]["sha256"] = "0" * 64
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {"manifest.json": orjson.dumps(manifest)})
    with pytest.raises(ArchiveRejected, match="digest"):
        verify(str(bad), str(tmp_path / "s"))


def test_missing_member_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {"state/alerts.db": None})
    with pytest.raises(ArchiveRejected, match="missing"):
        verify(str(bad), str(tmp_path / "s"))


def test_foreign_archive_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        data = orjson.dumps({"format": "something-else", "files": []})
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveRejected, match="foreign"):
        verify(str(other), str(tmp_path / "s"))
    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        info = tarfile.TarInfo("etc/passwd")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveRejected, match="no manifest"):
        verify(str(plain), str(tmp_path / "s2"))


def test_size_limit(tmp_path: Path) -> None:
    make_state(tmp_path / "state", rows=2000)
    with pytest.raises(ArchiveTooLarge):
        build(str(tmp_path / "b.tar.gz"), str(tmp_path / "state"), [], max_bytes=4096)
