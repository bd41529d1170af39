"""The archive format: a real SQLite database copied online, verified, refused when damaged."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import tarfile
import threading
from pathlib import Path

import orjson
import pytest

from cortexd.backup.archive import (
    ArchiveRejected,
    ArchiveTooLarge,
    RestoreLimits,
    build,
    verify,
)

LIMITS = RestoreLimits(total_bytes=1 << 30)


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
    verified = verify(str(target), str(staging), limits=LIMITS)
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
            verify(str(target), str(staging), limits=LIMITS)  # includes PRAGMA integrity_check
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
        verify(str(cut), str(tmp_path / "s"), limits=LIMITS)


def test_tampered_database_is_refused(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        db = bytearray(tar.extractfile("state/alerts.db").read())  # type: ignore[union-attr]
    db[-100] ^= 0xFF
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {"state/alerts.db": bytes(db)})
    with pytest.raises(ArchiveRejected, match="checksum mismatch"):
        verify(str(bad), str(tmp_path / "s"), limits=LIMITS)


def test_edited_manifest_is_refused(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        manifest = orjson.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    manifest["files"][0]["sha256"] = "0" * 64
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {"manifest.json": orjson.dumps(manifest)})
    with pytest.raises(ArchiveRejected, match="digest"):
        verify(str(bad), str(tmp_path / "s"), limits=LIMITS)


def test_missing_member_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {"state/alerts.db": None})
    with pytest.raises(ArchiveRejected, match="missing"):
        verify(str(bad), str(tmp_path / "s"), limits=LIMITS)


def test_foreign_archive_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        data = orjson.dumps({"format": "something-else", "files": []})
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveRejected, match="foreign"):
        verify(str(other), str(tmp_path / "s"), limits=LIMITS)
    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        info = tarfile.TarInfo("etc/passwd")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveRejected, match="no manifest"):
        verify(str(plain), str(tmp_path / "s2"), limits=LIMITS)


def test_size_limit(tmp_path: Path) -> None:
    make_state(tmp_path / "state", rows=2000)
    with pytest.raises(ArchiveTooLarge):
        build(str(tmp_path / "b.tar.gz"), str(tmp_path / "state"), [], max_bytes=4096)


# -- signatures -------------------------------------------------------------------

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def test_a_signed_archive_verifies_with_its_key_only(tmp_path: Path) -> None:
    make_state(tmp_path / "state")
    target = tmp_path / "b.tar.gz"
    manifest = build(str(target), str(tmp_path / "state"), [], max_bytes=1 << 30, key=KEY)
    assert manifest["version"] == 2
    assert len(manifest["signature"]) == 64
    assert verify(str(target), str(tmp_path / "s1"), limits=LIMITS, key=KEY)["signed"] is True

    seen: list[dict[str, object]] = []
    verified = verify(
        str(target), str(tmp_path / "s2"), limits=LIMITS, key=OTHER_KEY, on_unsigned=seen.append
    )
    assert verified["signed"] is False
    assert seen and seen[0]["key_id"] == manifest["key_id"]


def test_an_unsigned_archive_is_refused_before_anything_is_extracted(tmp_path: Path) -> None:
    make_state(tmp_path / "state")
    target = tmp_path / "b.tar.gz"
    build(str(target), str(tmp_path / "state"), [], max_bytes=1 << 30, key=None)
    staging = tmp_path / "s"

    def refuse(manifest: dict[str, object]) -> None:
        assert not staging.exists(), "nothing may be extracted before the decision"
        raise ArchiveRejected("not ours")

    with pytest.raises(ArchiveRejected, match="not ours"):
        verify(str(target), str(staging), limits=LIMITS, key=KEY, on_unsigned=refuse)
    assert not staging.exists()


def test_a_recomputed_digest_does_not_make_a_signature(tmp_path: Path) -> None:
    """The forged-archive attack: edit a member, fix the checksums, keep the old signature."""
    make_state(tmp_path / "state")
    conf = tmp_path / "daemon.conf"
    conf.write_text("alerts: {max_active: 7}\n")
    target = tmp_path / "b.tar.gz"
    build(str(target), str(tmp_path / "state"), [str(conf)], max_bytes=1 << 30, key=KEY)
    forged_conf = b"alerts: {max_active: 7}\nupdates: {apt_command: [/tmp/x.sh]}\n"
    with tarfile.open(target) as tar:
        manifest = orjson.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    entry = next(f for f in manifest["files"] if f["name"] == "config/0")
    entry["size"] = len(forged_conf)
    entry["sha256"] = hashlib.sha256(forged_conf).hexdigest()
    manifest["digest"] = hashlib.sha256(
        orjson.dumps(manifest["files"], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    forged = tmp_path / "forged.tar.gz"
    _rewrite(target, forged, {"manifest.json": orjson.dumps(manifest), "config/0": forged_conf})
    unsigned: list[object] = []
    verified = verify(
        str(forged), str(tmp_path / "s"), limits=LIMITS, key=KEY, on_unsigned=unsigned.append
    )
    assert verified["signed"] is False
    assert unsigned, "the forged archive must be treated as not signed by this host"


def test_the_key_travels_only_when_asked(tmp_path: Path) -> None:
    make_state(tmp_path / "state")
    with_key = tmp_path / "k.tar.gz"
    build(str(with_key), str(tmp_path / "state"), [], max_bytes=1 << 30, key=KEY, include_key=True)
    without = tmp_path / "n.tar.gz"
    build(str(without), str(tmp_path / "state"), [], max_bytes=1 << 30, key=KEY)
    with tarfile.open(with_key) as tar:
        assert tar.extractfile("key/host.key").read() == KEY  # type: ignore[union-attr]
    with tarfile.open(without) as tar:
        assert "key/host.key" not in tar.getnames()
    verify(str(with_key), str(tmp_path / "s"), limits=LIMITS, key=KEY)
    assert (tmp_path / "s" / "key" / "host.key").read_bytes() == KEY


# -- restore limits, checked while extracting -----------------------------------------

SMALL = RestoreLimits(total_bytes=1 << 20, members=20, config_member_bytes=64 << 10)


def _bomb(target: Path, members: dict[str, bytes], *, listed: dict[str, int] | None = None) -> None:
    """A well-formed archive of `members` whose manifest lists them (or `listed` sizes)."""
    files = [
        {"name": n, "size": (listed or {}).get(n, len(d)), "sha256": hashlib.sha256(d).hexdigest()}
        for n, d in members.items()
    ]
    manifest = {"format": "cortex-backup", "version": 2, "files": files}
    manifest["digest"] = hashlib.sha256(
        orjson.dumps(files, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    with tarfile.open(target, "w:gz") as tar:
        for name, data in {"manifest.json": orjson.dumps(manifest), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _staged_bytes(staging: Path) -> int:
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


def test_a_gzip_bomb_is_refused_by_what_it_claims(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    _bomb(bomb, {"state/alerts.db": bytes(64 << 20)})
    assert bomb.stat().st_size < 200_000
    staging = tmp_path / "s"
    with pytest.raises(ArchiveRejected, match=r"over backup.max_restore_bytes \(1048576\)"):
        verify(str(bomb), str(staging), limits=SMALL)
    assert not staging.exists() or _staged_bytes(staging) == 0


def test_a_bomb_with_a_lying_manifest_stops_at_the_limit(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    members = {f"state/db{i}.db": bytes(400 << 10) for i in range(8)}
    _bomb(bomb, members, listed=dict.fromkeys(members, 1))
    staging = tmp_path / "s"
    with pytest.raises(ArchiveRejected):
        verify(str(bomb), str(staging), limits=SMALL)
    assert _staged_bytes(staging) <= SMALL.total_bytes


def test_many_members_are_refused(tmp_path: Path) -> None:
    many = tmp_path / "many.tar.gz"
    _bomb(many, {f"config/{i}": b"" for i in range(30)})
    with pytest.raises(ArchiveRejected, match="lists 30 members"):
        verify(str(many), str(tmp_path / "s"), limits=SMALL)
    staging = tmp_path / "s2"
    _bomb(many, {f"config/{i}": b"" for i in range(100_000)})
    with pytest.raises(ArchiveRejected, match="manifest too large"):
        verify(str(many), str(staging), limits=SMALL)
    assert not staging.exists()


def test_an_oversized_config_member_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.tar.gz"
    _bomb(big, {"config/0": bytes(100 << 10)})
    with pytest.raises(ArchiveRejected, match="a configuration file may have"):
        verify(str(big), str(tmp_path / "s"), limits=SMALL)


def test_a_huge_tar_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """tarfile keeps a pax header in memory: the decompressed stream itself is bounded."""
    bomb = tmp_path / "pax.tar.gz"
    with tarfile.open(bomb, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.pax_headers = {"comment": "x" * (8 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveRejected, match="decompresses to more than"):
        verify(str(bomb), str(tmp_path / "s"), limits=SMALL)
