"""Backups, restores, scheduled backups and database upkeep for one daemon.

The service knows the daemon's state directory, its configuration files and
its components; it never opens a path a caller names. Archives it keeps
itself (scheduled, pre-restore) live under `<state_dir>/backups`.

Every archive's manifest is signed with the host key (`hostkey`), loaded or
created when the service starts. A restore by anyone but root (or the
daemon's own user) accepts only archives with this key's signature; root
restores another one only when it says `foreign: true`. The key itself goes
into archives root asks for and those kept under `<state_dir>/backups`, never
into one streamed to an admin who is not root: with it, anyone could sign.

Restore swaps databases only while their owners have them closed: each
database the composition root declared (`cortexd.store.Stores`) under the
state directory is released by its owner (closed, or the alert manager
stopped), the verified copies are moved into place with `os.replace` (an
atomic rename on the same filesystem), and the owners resume (reopen, or
`open()`, which reloads what they keep in memory). Requests arriving in that window get
UNAVAILABLE from the closed database, never a half-swapped one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from cortexd.backup import hostkey
from cortexd.backup.errors import ArchiveTooLarge, ArchiveUnsigned
from cortexd.backup.uploads import Upload, Uploads
from cortexd.config.collect import CONFIG_DIR, ConfigTargets, collect_config, config_files
from cortexd.config.rootonly import is_root_or_owner
from cortexd.config.schema import BackupConfig, Config
from cortexd.imports import imported
from cortexd.protocol import Busy, PermissionDenied, Unavailable
from cortexd.store import StoreOwner, Stores

if TYPE_CHECKING:
    from cortexd.backup.archive import RestoreLimits
    from cortexd.runtime import Runtime

log = logging.getLogger(__name__)

DAY = 86400.0
HOUR = 3600.0
# With `backup.max_restore_bytes: 0`, a restore may extract this many times
# the present state, and never less than the floor (a new host's state is tiny).
RESTORE_STATE_FACTOR = 4
RESTORE_FLOOR_BYTES = 256 << 20
BUILD_DEADLINE = 600.0


class BackupService:
    """A component: on-demand archives, restore, daily backups and upkeep."""

    name = "backup"

    def __init__(
        self,
        daemon: Runtime,
        config_targets: ConfigTargets,
        stores: Stores,
        *,
        config_dir: str = CONFIG_DIR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.daemon = daemon
        self.config_targets = config_targets
        self.stores = stores
        self.config_dir = config_dir
        self.clock = clock
        self.uploads = Uploads(clock, lambda: self.config.upload_idle_seconds)
        self.key: bytes | None = None
        self.key_problem: str | None = None
        self._restoring = anyio.Lock()
        self.last_backup: float | None = None
        self.last_upkeep: float | None = None
        self.last_vacuum: float | None = None
        self.restores = 0

    @property
    def config(self) -> BackupConfig:
        return self.daemon.config.backup

    @property
    def state_dir(self) -> str:
        return self.daemon.config.state_dir

    @property
    def backups_dir(self) -> str:
        return os.path.join(self.state_dir, "backups")

    def _work_dir(self) -> str:
        path = os.path.join(self.state_dir, "backups", "tmp")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    # -- component -----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "state": "restoring" if self._restoring.locked() else "running",
            "schedule": self.config.schedule,
            "last_backup": self.last_backup,
            "last_upkeep": self.last_upkeep,
            "uploads": len(self.uploads),
            "restores": self.restores,
            "host_key": hostkey.key_id(self.key) if self.key is not None else None,
            "host_key_problem": self.key_problem,
        }

    async def start(self, tg: TaskGroup) -> None:
        await anyio.to_thread.run_sync(self._clear_leftovers)
        await self._load_key()
        tg.start_soon(self._loop)

    async def _load_key(self) -> bytes | None:
        """The host key, read or created once; None (and why in `key_problem`) if unusable."""
        if self.key is None and self.key_problem is None:
            try:
                self.key = await anyio.to_thread.run_sync(hostkey.load_or_create, self.state_dir)
            except (hostkey.HostKeyError, OSError) as exc:
                # Backups cannot be signed, nor this host's archives recognised;
                # everything else (and root's foreign restores) goes on.
                self.key_problem = str(exc)
                log.error("backup host key unusable, backups are off: %s", exc)
        return self.key

    def apply_config(self, config: Config) -> None:
        """Settings are read through the daemon on each use."""

    async def stop(self) -> None:
        self.uploads.drop_all()

    def _clear_leftovers(self) -> None:
        shutil.rmtree(os.path.join(self.backups_dir, "tmp"), ignore_errors=True)

    async def _loop(self) -> None:
        while True:
            await anyio.sleep(60.0)
            try:
                await self.tick()
            except Exception:  # isolation boundary: the next round retries
                log.exception("backup housekeeping failed")

    async def tick(self) -> None:
        """One round: expire idle uploads, take the daily backup, run upkeep when due."""
        now = self.clock()
        self.uploads.expire()
        cfg = self.config
        if cfg.schedule == "daily" and (self.last_backup is None or now - self.last_backup >= DAY):
            await self.scheduled_backup()
        if cfg.upkeep_interval_hours > 0 and (
            self.last_upkeep is None or now - self.last_upkeep >= cfg.upkeep_interval_hours * HOUR
        ):
            vacuum = cfg.vacuum_interval_days > 0 and (
                self.last_vacuum is None or now - self.last_vacuum >= cfg.vacuum_interval_days * DAY
            )
            await self.upkeep(vacuum=vacuum)

    # -- archives -------------------------------------------------------------

    async def build(
        self, kind: str = "manual", *, include_key: bool = True
    ) -> tuple[str, dict[str, Any]]:
        """Write a fresh signed archive to a temporary file; returns (path, manifest).

        `include_key` puts the host key in it: only for root and for the
        archives kept in the state directory.

        Raises:
            Unavailable: the host key is unusable (see `state()`).
        """
        key = await self._load_key()
        if key is None:
            raise Unavailable(f"backups are off: the host key is unusable: {self.key_problem}")
        work = await anyio.to_thread.run_sync(self._work_dir)
        target = os.path.join(work, f"{kind}-{uuid.uuid4().hex[:12]}.tar.gz")
        copier = self.stores.copier()

        def build() -> dict[str, Any]:
            from cortexd.backup import archive  # tarfile and gzip: imported on first use

            found = collect_config(self.config_targets(), self.config_dir)
            for item in found.left_out:
                log.warning("backup: leaving out %s: %s", item["path"], item["reason"])
            return archive.build(
                target,
                self.state_dir,
                found.files,
                max_bytes=self.config.max_archive_bytes,
                kind=kind,
                key=key,
                include_key=include_key,
                copier=copier,
                left_out=found.left_out,
            )

        with anyio.fail_after(BUILD_DEADLINE):
            manifest = await anyio.to_thread.run_sync(build)
        return target, manifest

    async def keep(self, kind: str) -> str:
        """Build an archive and keep it under `<state_dir>/backups`; returns its path."""
        path, _manifest = await self.build(kind)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))
        final = os.path.join(self.backups_dir, f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}.tar.gz")
        await anyio.to_thread.run_sync(os.replace, path, final)
        return final

    async def scheduled_backup(self) -> str:
        path = await self.keep("scheduled")
        self.last_backup = self.clock()
        removed = await anyio.to_thread.run_sync(self.prune)
        log.info("scheduled backup written to %s (%d old ones removed)", path, removed)
        return path

    def prune(self) -> int:
        """Delete kept archives older than `backup.retention_days`; returns how many."""
        horizon = self.clock() - self.config.retention_days * DAY
        removed = 0
        try:
            names = os.listdir(self.backups_dir)
        except FileNotFoundError:
            return 0
        for name in names:
            path = os.path.join(self.backups_dir, name)
            if name.endswith(".tar.gz") and os.path.getmtime(path) < horizon:
                os.unlink(path)
                removed += 1
        return removed

    # -- upkeep -------------------------------------------------------------

    def databases(self) -> list[StoreOwner]:
        """The declared databases that live in the state directory."""
        root = os.path.realpath(self.state_dir)
        return [
            owner
            for owner in self.stores
            if os.path.dirname(os.path.realpath(owner.db.path)) == root
        ]

    async def upkeep(self, *, vacuum: bool = False) -> list[str]:
        """WAL checkpoint and `PRAGMA optimize` (and VACUUM) on every open database."""
        done = []
        for db in (owner.db for owner in self.databases()):

            def work(conn: Any) -> None:
                conn.execute("PRAGMA optimize").fetchall()
                if vacuum:
                    conn.execute("VACUUM")
                # Last: VACUUM itself goes through the WAL in WAL mode.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

            await db.read(work, deadline=300.0)
            done.append(os.path.basename(db.path))
        self.last_upkeep = self.clock()
        if vacuum:
            self.last_vacuum = self.last_upkeep
        log.info("database upkeep done on %s%s", ", ".join(done), " with VACUUM" * vacuum)
        return done

    # -- restore ---------------------------------------------------------------

    def begin_upload(self, size: int, uid: int, sha256: str) -> Upload:
        """Start receiving an archive of `size` bytes (see `uploads`).

        Raises:
            Busy: another upload is in progress.
            ArchiveTooLarge: over `backup.max_archive_bytes`.
        """
        if size > self.config.max_archive_bytes:
            raise ArchiveTooLarge(size, self.config.max_archive_bytes)
        path = os.path.join(self._work_dir(), f"upload-{uuid.uuid4().hex[:12]}.tar.gz")
        upload = self.uploads.begin(path, size, uid, sha256)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        return upload

    def upload(self, upload_id: str, uid: int) -> Upload:
        """The upload, for its owner or root (NotFound, PermissionDenied)."""
        return self.uploads.get(upload_id, uid)

    def _drop(self, upload: Upload) -> None:
        self.uploads.drop(upload)

    def restore_limits(self) -> RestoreLimits:
        """`backup.max_restore_bytes`, or with 0 a few times the present state."""
        limit = self.config.max_restore_bytes
        if limit <= 0:
            present = _size_of(self.state_dir) + sum(
                _file_size(p) for p in config_files(self.config_targets(), self.config_dir)
            )
            limit = max(RESTORE_STATE_FACTOR * present, RESTORE_FLOOR_BYTES)
        from cortexd.backup import archive  # tarfile and gzip: imported on first use

        return archive.RestoreLimits(total_bytes=limit)

    async def restore(
        self, upload: Upload, *, with_config: bool, caller_uid: int, foreign: bool = False
    ) -> dict[str, Any]:
        """Verify the uploaded archive, back up the current state, then swap it in.

        With `with_config`, the archived configuration files and plugin files
        are checked (`cortexd.config.restore`) before anything changes; once
        written, the plugins are loaded again and the configuration reloaded. An archive not
        signed with this host's key needs root (or the daemon's own user) and
        `foreign`. The host key in an archive is never put back by a restore:
        root copies it out by hand when that is what is wanted (docs/security.md).

        Raises:
            ArchiveRejected: the archive failed verification (nothing changed).
            PermissionDenied: the archive is not signed by this host and the
                caller is not root (nothing changed).
            RootOnlyChange: a caller other than root would change root-only
                keys or plugin files (nothing changed).
            ConfigError: an archived daemon.conf or rules file does not
                validate (nothing changed).
        """
        if self._restoring.locked():
            raise Busy("a restore is already running")
        async with self._restoring:
            try:
                return await self._restore(
                    upload, with_config=with_config, caller_uid=caller_uid, foreign=foreign
                )
            finally:
                self._drop(upload)

    async def _restore(
        self, upload: Upload, *, with_config: bool, caller_uid: int, foreign: bool
    ) -> dict[str, Any]:
        staging = os.path.join(self._work_dir(), f"staging-{uuid.uuid4().hex[:8]}")
        privileged = is_root_or_owner(caller_uid)

        def on_unsigned(manifest: dict[str, Any]) -> None:
            why = _unsigned_reason(manifest, self.key)
            if not privileged:
                raise PermissionDenied(
                    f"this archive {why}; only root may restore it, with foreign: true",
                    reason=why,
                )
            if not foreign:
                raise ArchiveUnsigned(
                    f"it {why}; to restore it anyway (root only) pass foreign: true "
                    "(cortexctl restore --foreign)"
                )

        try:
            limits = await anyio.to_thread.run_sync(self.restore_limits)

            def verify() -> dict[str, Any]:
                from cortexd.backup import archive  # tarfile and gzip: imported on first use

                return archive.verify(
                    upload.path, staging, limits=limits, key=self.key, on_unsigned=on_unsigned
                )

            manifest = await anyio.to_thread.run_sync(verify)
            plan = None
            if with_config:
                await imported("cortexd.config.restore")  # on first use, off the loop
                from cortexd.config.restore import (
                    plan_config_restore,
                    reload_restored,
                    staged_files,
                    write_config_files,
                )

                staged = staged_files(manifest["files"], staging)
                plan = await anyio.to_thread.run_sync(
                    lambda: plan_config_restore(
                        staged,
                        self.config_targets(),
                        privileged=privileged,
                    )
                )
            safety = await self.keep("pre-restore")
            log.warning("restoring a backup; the state before it is kept in %s", safety)
            restored = await self._swap_databases(staging, manifest)
            config_written: list[str] = []
            if plan is not None:
                for skipped in plan.skipped:
                    log.warning("restore: not writing %s: %s", skipped["origin"], skipped["reason"])
                config_written = await anyio.to_thread.run_sync(write_config_files, plan)
                await reload_restored(plan, config_written, self.daemon.reload)
            self.restores += 1
            return {
                "restored": restored,
                "config_restored": config_written,
                "config_skipped": plan.skipped if plan is not None else [],
                "plugins_restored": plan.plugins(config_written) if plan is not None else [],
                "previous_state_backup": safety,
                "archive_created": manifest.get("created"),
                "archive_host": manifest.get("host"),
                "same_machine": _same_machine(manifest),
                "signed_by_this_host": manifest["signed"],
            }
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))

    async def _swap_databases(self, staging: str, manifest: dict[str, Any]) -> list[str]:
        names = [f["name"] for f in manifest["files"] if f["name"].startswith("state/")]
        owners = {os.path.basename(owner.db.path): owner for owner in self.databases()}
        restored = []
        for name in names:
            base = os.path.basename(name)
            owner = owners.get(base)
            if owner is not None:
                await owner.release()
            try:
                await anyio.to_thread.run_sync(
                    _replace_db, os.path.join(staging, name), os.path.join(self.state_dir, base)
                )
                restored.append(base)
            finally:
                if owner is not None:
                    await owner.resume()
        return restored


def _unsigned_reason(manifest: dict[str, Any], key: bytes | None) -> str:
    """Why an archive does not verify with `key`, in words."""
    if not isinstance(manifest.get("signature"), str):
        return "is not signed (made by a daemon before archives were signed)"
    if key is not None and manifest.get("key_id") == hostkey.key_id(key):
        return "carries a signature of this host that does not match (edited after it was made)"
    host = manifest.get("host") or "an unknown host"
    return f"is signed with another daemon's key (made on {host}, key {manifest.get('key_id')})"


def _same_machine(manifest: dict[str, Any]) -> bool:
    from cortexd.backup import archive  # tarfile and gzip: imported on first use

    here = archive.machine_id()
    return bool(here) and manifest.get("machine_id") == here


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _size_of(directory: str) -> int:
    """The bytes of the files directly in `directory` (the databases and their journals)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    return sum(_file_size(os.path.join(directory, n)) for n in names)


def _replace_db(source: str, target: str) -> None:
    tmp = f"{target}.restore-tmp"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o600)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target + suffix)
    os.replace(tmp, target)
