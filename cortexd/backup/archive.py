"""The backup archive: state databases, configuration files, a manifest, checksums.

An archive is a gzip'd tar holding `manifest.json` first, then `state/<name>.db`
(each an online copy made with SQLite's backup API, so it is consistent while
the daemon writes) and `config/<n>` (a configuration file; the manifest names
where it came from). The manifest lists every member with its size and
SHA-256, and carries its own digest over that list.

Verification refuses: anything that is not a gzip'd tar (corrupt, truncated),
an archive without our manifest or of another format or newer version
(foreign), a member whose bytes or size differ from the manifest, a member
not listed or listed but missing (tampered), unsafe names, and a database
that fails `PRAGMA integrity_check`. The checksums catch corruption and
edits; they are not a signature — restoring is an admin act, and the archive
should be kept where only admins can write it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from cortexd import __version__
from cortexd.protocol import CortexError, ErrorCode

FORMAT = "cortex-backup"
VERSION = 1
MANIFEST = "manifest.json"
_MEMBER = re.compile(r"^(state/[A-Za-z0-9_.-]+\.db|config/\d+)$")
_READ = 1 << 20


class ArchiveRejected(CortexError):
    """The archive failed verification; nothing was changed."""

    code = ErrorCode.INVALID_PARAMS

    def __init__(self, reason: str) -> None:
        super().__init__(f"backup archive refused: {reason}", reason=reason)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """A configuration file to archive, by its absolute path."""

    path: str


def machine_id() -> str:
    try:
        with open("/etc/machine-id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def copy_database(source: str, target: str) -> None:
    """An online, consistent copy of `source` into a new file `target` (backup API)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            # A single self-contained file: no WAL beside the copy.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def state_databases(state_dir: str) -> list[str]:
    """The SQLite files directly under `state_dir`."""
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return []
    return [
        os.path.join(state_dir, n)
        for n in names
        if n.endswith(".db") and os.path.isfile(os.path.join(state_dir, n))
    ]


def _manifest_digest(files: list[dict[str, Any]]) -> str:
    return hashlib.sha256(orjson.dumps(files, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build(
    target: str,
    state_dir: str,
    config_files: Iterable[str],
    *,
    max_bytes: int,
    kind: str = "manual",
) -> dict[str, Any]:
    """Write an archive of `state_dir`'s databases and `config_files` to `target`.

    Blocking (run it in a thread). Returns the manifest.

    Raises:
        CortexError (TOO_LARGE): the archive would exceed `max_bytes`.
    """
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=os.path.dirname(target)) as work:
        members: list[tuple[str, str]] = []
        files: list[dict[str, Any]] = []
        for path in state_databases(state_dir):
            name = f"state/{os.path.basename(path)}"
            copy = os.path.join(work, os.path.basename(path))
            copy_database(path, copy)
            members.append((name, copy))
            files.append({"name": name, "size": os.path.getsize(copy), "sha256": sha256_file(copy)})
        seen: set[str] = set()
        for path in config_files:
            real = os.path.realpath(path)
            if real in seen or not os.path.isfile(real):
                continue
            seen.add(real)
            name = f"config/{len(seen) - 1}"
            members.append((name, real))
            files.append(
                {
                    "name": name,
                    "origin": os.path.abspath(path),
                    "mode": os.stat(real).st_mode & 0o7777,
                    "size": os.path.getsize(real),
                    "sha256": sha256_file(real),
                }
            )
        created = time.time()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "created": created,
            "host": socket.gethostname(),
            "machine_id": machine_id(),
            "daemon_version": __version__,
            "files": files,
            "digest": _manifest_digest(files),
        }
        total = sum(f["size"] for f in files)
        if total > max_bytes:
            raise ArchiveTooLarge(total, max_bytes)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            info.mtime = int(created)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
            for name, path in members:
                info = tar.gettarinfo(path, arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o600
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            raw.flush()
            os.fsync(raw.fileno())
        if os.path.getsize(target) > max_bytes:
            raise ArchiveTooLarge(os.path.getsize(target), max_bytes)
        return manifest


class ArchiveTooLarge(CortexError):
    """An archive over `backup.max_archive_bytes`."""

    code = ErrorCode.TOO_LARGE

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the archive ({size} bytes) exceeds backup.max_archive_bytes ({limit})",
            size=size,
            limit=limit,
        )


def verify(path: str, staging: str) -> dict[str, Any]:
    """Check the archive at `path` and extract its members into `staging`.

    Blocking. Returns the manifest; members land at `staging/<name>`.

    Raises:
        ArchiveRejected: corrupt, truncated, foreign or tampered (see the module docstring).
    """
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise ArchiveRejected("not a cortex backup (no manifest.json first)")
            manifest = _load_manifest(tar, first)
            listed = {f["name"]: f for f in manifest["files"]}
            found: set[str] = set()
            while (member := tar.next()) is not None:
                name = member.name
                if not member.isfile() or not _MEMBER.match(name) or name in found:
                    raise ArchiveRejected(f"unexpected member {name!r}")
                if name not in listed:
                    raise ArchiveRejected(f"member {name!r} is not in the manifest (tampered)")
                found.add(name)
                _extract_checked(tar, member, listed[name], os.path.join(staging, name))
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, ArchiveRejected):
            raise
        raise ArchiveRejected(f"corrupt or truncated archive ({exc})") from None
    missing = set(listed) - found
    if missing:
        raise ArchiveRejected(f"members missing (truncated or tampered): {sorted(missing)}")
    for name in listed:
        if name.startswith("state/"):
            _integrity(os.path.join(staging, name), name)
    return manifest


def _load_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
    if member.size > 1 << 20:
        raise ArchiveRejected("manifest too large")
    fh = tar.extractfile(member)
    assert fh is not None
    try:
        manifest = orjson.loads(fh.read())
    except orjson.JSONDecodeError:
        raise ArchiveRejected("the manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveRejected("not a cortex backup (foreign format)")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ArchiveRejected(f"made by a newer daemon (format version {version})")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("name"), str)
        and _MEMBER.match(f["name"])
        and isinstance(f.get("size"), int)
        and isinstance(f.get("sha256"), str)
        for f in files
    ):
        raise ArchiveRejected("the manifest's file list is malformed")
    if manifest.get("digest") != _manifest_digest(files):
        raise ArchiveRejected("the manifest's digest does not match its file list (tampered)")
    return manifest


def _extract_checked(
    tar: tarfile.TarFile, member: tarfile.TarInfo, entry: dict[str, Any], target: str
) -> None:
    if member.size != entry["size"]:
        raise ArchiveRejected(f"{member.name}: size differs from the manifest (tampered)")
    source = tar.extractfile(member)
    assert source is not None
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_READ):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != entry["sha256"]:
        raise ArchiveRejected(f"{member.name}: checksum mismatch (corrupt or tampered)")


def _integrity(path: str, name: str) -> None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ArchiveRejected(f"{name} is not a valid database ({exc})") from None
    if result != "ok":
        raise ArchiveRejected(f"{name} failed its integrity check: {result}")
