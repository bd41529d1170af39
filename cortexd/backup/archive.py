"""The backup archive: state databases, configuration files, a manifest, checksums.

An archive is a gzip'd tar holding `manifest.json` first, then `state/<name>.db`
(each an online copy made with SQLite's backup API, so it is consistent while
the daemon writes), `config/<n>` (a configuration file; the manifest names
where it came from) and, in archives root asked for or the daemon keeps
itself, `key/host.key` (the host key, see `hostkey`). The manifest lists
every member with its size and SHA-256, carries a digest over that list, and
is signed with the host key (HMAC-SHA256, `signature` and `key_id`).

Verification refuses: anything that is not a gzip'd tar (corrupt, truncated),
an archive without our manifest or of another format or newer version
(foreign), a member whose bytes or size differ from the manifest, a member
not listed or listed but missing (tampered), unsafe names, a database that
fails `PRAGMA integrity_check`, and an archive past the restore limits (total
decompressed bytes, bytes per member, member count), counted while
extracting so a small archive cannot fill the disk first. Whether an archive
without this host's signature may be restored is the caller's decision,
taken (through `on_unsigned`) before any member is extracted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import socket
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from zlib import error as zlib_error

import orjson

from cortexd import __version__
from cortexd.backup import hostkey
from cortexd.backup.errors import ArchiveRejected, ArchiveTooLarge
from cortexd.config.collect import MAX_CONFIG_MEMBER_BYTES
from cortexd.host.files import sha256_file
from cortexd.store.copy import copy_database, state_databases

FORMAT = "cortex-backup"
# 2: signed manifests. Version 1 archives (unsigned) still verify, as foreign.
VERSION = 2
MANIFEST = "manifest.json"
KEY_MEMBER = "key/host.key"
_MEMBER = re.compile(r"^(state/[A-Za-z0-9_.-]+\.db|config/\d+|key/host\.key)$")
_READ = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20
# What one archive may hold: the manifest, the databases, up to 256
# configuration files (the daemon archives no more), the key.
MAX_MEMBERS = 400
# tar's per-member header (with a possible long-name or pax header) and the
# final padding, on top of the members' bytes, in the decompressed stream.
_TAR_OVERHEAD_PER_MEMBER = 3 * 512
_TAR_END = 20 * 512


@dataclass(frozen=True, slots=True)
class RestoreLimits:
    """How much one restore may extract: in all, per member, and how many members."""

    total_bytes: int
    members: int = MAX_MEMBERS
    config_member_bytes: int = MAX_CONFIG_MEMBER_BYTES

    def stream_bytes(self) -> int:
        """The most the decompressed tar stream may hold for these limits."""
        return (
            self.total_bytes
            + MAX_MANIFEST_BYTES
            + (self.members + 1) * _TAR_OVERHEAD_PER_MEMBER
            + _TAR_END
        )


def machine_id() -> str:
    try:
        with open("/etc/machine-id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _manifest_digest(files: list[dict[str, Any]]) -> str:
    return hashlib.sha256(orjson.dumps(files, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build(
    target: str,
    state_dir: str,
    config_files: Iterable[str],
    *,
    max_bytes: int,
    kind: str = "manual",
    key: bytes | None = None,
    include_key: bool = False,
    # How each database is copied: the daemon's goes through the connection it holds.
    copier: Callable[[str, str], None] = copy_database,
    left_out: Iterable[dict[str, str]] = (),
) -> dict[str, Any]:
    """Write an archive of `state_dir`'s databases and `config_files` to `target`.

    The manifest is signed with `key` (unsigned without one); `include_key`
    adds the key itself as a member; `left_out` (files the caller did not
    keep, each `path` and `reason`) goes into the manifest as it is. Blocking
    (run it in a thread). Returns the manifest.

    Raises:
        CortexError (TOO_LARGE): the archive would exceed `max_bytes`.
    """
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=os.path.dirname(target)) as work:
        members: list[tuple[str, str]] = []
        files: list[dict[str, Any]] = []
        for path in state_databases(state_dir):
            name = f"state/{os.path.basename(path)}"
            copy = os.path.join(work, os.path.basename(path))
            copier(path, copy)
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
        if include_key and key is not None:
            copy = os.path.join(work, "host.key")
            hostkey.install(copy, key)
            members.append((KEY_MEMBER, copy))
            files.append({"name": KEY_MEMBER, "size": len(key), "sha256": sha256_file(copy)})
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
            "left_out": list(left_out),
        }
        if key is not None:
            manifest["key_id"] = hostkey.key_id(key)
            manifest["signature"] = hostkey.sign(key, manifest)
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


def verify(
    path: str,
    staging: str,
    *,
    limits: RestoreLimits,
    key: bytes | None = None,
    on_unsigned: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Check the archive at `path` and extract its members into `staging`.

    `on_unsigned(manifest)` runs when the manifest is not signed with `key`,
    before anything is extracted; it raises to refuse. Blocking. Returns the
    manifest, with `signed` (by `key`) added; members land at `staging/<name>`.

    Raises:
        ArchiveRejected: corrupt, truncated, foreign, tampered or past the
            limits (see the module docstring); nothing past the limits was
            written to `staging`.
    """
    try:
        with (
            open(path, "rb") as raw,
            gzip.GzipFile(fileobj=raw, mode="rb") as unzipped,
            tarfile.open(fileobj=_Bounded(unzipped, limits.stream_bytes()), mode="r|") as tar,
        ):
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise ArchiveRejected("not a cortex backup (no manifest.json first)")
            manifest = _load_manifest(tar, first)
            manifest["signed"] = hostkey.signed_by(key, manifest)
            if not manifest["signed"] and on_unsigned is not None:
                on_unsigned(manifest)
            listed = {f["name"]: f for f in manifest["files"]}
            _check_listed(listed, limits)
            found: set[str] = set()
            total = 0
            while (member := tar.next()) is not None:
                name = member.name
                if len(found) >= limits.members:
                    raise ArchiveRejected(f"more than {limits.members} members")
                if not member.isfile() or not _MEMBER.match(name) or name in found:
                    raise ArchiveRejected(f"unexpected member {name!r}")
                if name not in listed:
                    raise ArchiveRejected(f"member {name!r} is not in the manifest (tampered)")
                _check_member_size(member, limits, total)
                found.add(name)
                total += member.size
                _extract_checked(tar, member, listed[name], os.path.join(staging, name))
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib_error) as exc:
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


def _check_listed(listed: dict[str, dict[str, Any]], limits: RestoreLimits) -> None:
    """Refuse at once what the manifest itself says is past the limits."""
    if len(listed) > limits.members:
        raise ArchiveRejected(f"the manifest lists {len(listed)} members (limit {limits.members})")
    claimed = sum(max(0, f["size"]) for f in listed.values())
    if claimed > limits.total_bytes:
        raise ArchiveRejected(_over_total(claimed, limits))


def _check_member_size(member: tarfile.TarInfo, limits: RestoreLimits, so_far: int) -> None:
    name = member.name
    if name == KEY_MEMBER and member.size != hostkey.KEY_BYTES:
        raise ArchiveRejected(f"{name}: {member.size} bytes, not {hostkey.KEY_BYTES}")
    if name.startswith("config/") and member.size > limits.config_member_bytes:
        raise ArchiveRejected(
            f"{name}: {member.size} bytes, over the {limits.config_member_bytes} a "
            "configuration file may have"
        )
    if so_far + member.size > limits.total_bytes:
        raise ArchiveRejected(_over_total(so_far + member.size, limits))


def _over_total(size: int, limits: RestoreLimits) -> str:
    return f"it would extract {size} bytes, over backup.max_restore_bytes ({limits.total_bytes})"


class _Bounded(io.RawIOBase):
    """A read-only stream that refuses to give more than `limit` bytes in all.

    tarfile reads headers (pax headers included) into memory and skips over
    member data by reading it; this bounds all of that, whatever the
    headers claim, before it costs memory or disk.
    """

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._left = limit
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view)
        if self._left <= 0:
            # One byte more tells a stream that ends exactly at the limit from a longer one.
            if self._inner.read(1):
                raise ArchiveRejected(f"the archive decompresses to more than {self._limit} bytes")
            return 0
        data = self._inner.read(min(want, self._left))
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _load_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
    if member.size > MAX_MANIFEST_BYTES:
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
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
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
