"""Backups, restores, scheduled backups and database upkeep for one daemon.

The service knows the daemon's state directory, its configuration files and
its components; it never opens a path a caller names. Archives it keeps
itself (scheduled, pre-restore) live under `<state_dir>/backups`.

Restore swaps databases only while their owners have them closed: each
component holding a `Database` under the state directory is asked to close
(`stop()`), the verified copies are moved into place with `os.replace` (an
atomic rename on the same filesystem), and the owners reopen (`open()`),
which reloads what they keep in memory. Requests arriving in that window get
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

from cortexd.backup import archive
from cortexd.config.restore import (
    ConfigTarget,
    StagedFile,
    may_change_root_only,
    plan_config_restore,
    write_config_files,
)
from cortexd.config.schema import BackupConfig
from cortexd.protocol import Busy, NotFound, PermissionDenied
from cortexd.store import Database

if TYPE_CHECKING:
    from cortexd.app import Daemon

log = logging.getLogger(__name__)

DAY = 86400.0
HOUR = 3600.0
UPLOAD_IDLE_SECONDS = 600.0
BUILD_DEADLINE = 600.0
CONFIG_DIR = "/etc/cortex"
MAX_CONFIG_FILES = 256


ConfigTargets = Callable[[], list[ConfigTarget]]


def config_files(targets: list[ConfigTarget], config_dir: str = CONFIG_DIR) -> list[str]:
    """What an archive or snapshot keeps: the configuration files, plus the files of /etc/cortex.

    Only the `targets` are ever written back; the rest of /etc/cortex (plugins,
    certificates) is kept for root to take out of the archive by hand.
    """
    found = [t.path for t in targets]
    if os.path.isdir(config_dir):
        for root, _dirs, names in os.walk(config_dir):
            for name in sorted(names):
                found.append(os.path.join(root, name))
                if len(found) >= MAX_CONFIG_FILES:
                    return found
    return found


class Upload:
    """An archive arriving in chunks over the socket, written under the state dir."""

    def __init__(self, path: str, size: int, uid: int, clock: Callable[[], float]) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.path = path
        self.size = size
        self.uid = uid
        self.received = 0
        self.touched = clock()


class BackupService:
    """A component: on-demand archives, restore, daily backups and upkeep."""

    name = "backup"

    def __init__(
        self,
        daemon: Daemon,
        config_targets: ConfigTargets,
        *,
        config_dir: str = CONFIG_DIR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.daemon = daemon
        self.config_targets = config_targets
        self.config_dir = config_dir
        self.clock = clock
        self.uploads: dict[str, Upload] = {}
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
        }

    async def start(self, tg: TaskGroup) -> None:
        await anyio.to_thread.run_sync(self._clear_leftovers)
        tg.start_soon(self._loop)

    def apply_config(self, config: Any) -> None:
        """Settings are read through the daemon on each use."""

    async def stop(self) -> None:
        for upload in list(self.uploads.values()):
            self._drop(upload)

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
        for upload in list(self.uploads.values()):
            if now - upload.touched > UPLOAD_IDLE_SECONDS:
                self._drop(upload)
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

    async def build(self, kind: str = "manual") -> tuple[str, dict[str, Any]]:
        """Write a fresh archive to a temporary file; returns (path, manifest)."""
        work = await anyio.to_thread.run_sync(self._work_dir)
        target = os.path.join(work, f"{kind}-{uuid.uuid4().hex[:12]}.tar.gz")
        files = config_files(self.config_targets(), self.config_dir)
        with anyio.fail_after(BUILD_DEADLINE):
            manifest = await anyio.to_thread.run_sync(
                lambda: archive.build(
                    target,
                    self.state_dir,
                    files,
                    max_bytes=self.config.max_archive_bytes,
                    kind=kind,
                )
            )
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

    def databases(self) -> list[tuple[Any, Database]]:
        """(owner component, its database) for each database under the state dir."""
        found = []
        root = os.path.realpath(self.state_dir)
        for component in self.daemon.components:
            db = getattr(component, "db", None)
            if isinstance(db, Database) and os.path.dirname(os.path.realpath(db.path)) == root:
                found.append((component, db))
        return found

    async def upkeep(self, *, vacuum: bool = False) -> list[str]:
        """WAL checkpoint and `PRAGMA optimize` (and VACUUM) on every open database."""
        done = []
        for _owner, db in self.databases():

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

    def begin_upload(self, size: int, uid: int) -> Upload:
        if self.uploads:
            raise Busy("another restore upload is in progress")
        if size > self.config.max_archive_bytes:
            raise archive.ArchiveTooLarge(size, self.config.max_archive_bytes)
        path = os.path.join(self._work_dir(), f"upload-{uuid.uuid4().hex[:12]}.tar.gz")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        upload = Upload(path, size, uid, self.clock)
        self.uploads[upload.id] = upload
        return upload

    def upload(self, upload_id: str, uid: int) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise NotFound(f"no upload {upload_id!r}", id=upload_id)
        if upload.uid != uid and uid != 0:
            raise PermissionDenied("this upload belongs to another user")
        upload.touched = self.clock()
        return upload

    def _drop(self, upload: Upload) -> None:
        self.uploads.pop(upload.id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upload.path)

    async def restore(
        self, upload: Upload, *, with_config: bool, caller_uid: int
    ) -> dict[str, Any]:
        """Verify the uploaded archive, back up the current state, then swap it in.

        With `with_config`, the archived configuration files are checked
        (`cortexd.config.restore`) before anything changes.

        Raises:
            ArchiveRejected: the archive failed verification (nothing changed).
            RootOnlyChange: a caller other than root would change root-only
                keys (nothing changed).
            ConfigError: an archived daemon.conf does not validate (nothing changed).
        """
        if self._restoring.locked():
            raise Busy("a restore is already running")
        async with self._restoring:
            try:
                return await self._restore(upload, with_config=with_config, caller_uid=caller_uid)
            finally:
                self._drop(upload)

    async def _restore(
        self, upload: Upload, *, with_config: bool, caller_uid: int
    ) -> dict[str, Any]:
        staging = os.path.join(self._work_dir(), f"staging-{uuid.uuid4().hex[:8]}")
        try:
            manifest = await anyio.to_thread.run_sync(archive.verify, upload.path, staging)
            plan = None
            if with_config:
                staged = [
                    StagedFile(f.get("origin"), os.path.join(staging, f["name"]))
                    for f in manifest["files"]
                    if f["name"].startswith("config/")
                ]
                plan = await anyio.to_thread.run_sync(
                    lambda: plan_config_restore(
                        staged,
                        self.config_targets(),
                        privileged=may_change_root_only(caller_uid),
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
                if config_written:
                    await self.daemon.reload()
            self.restores += 1
            return {
                "restored": restored,
                "config_restored": config_written,
                "config_skipped": plan.skipped if plan is not None else [],
                "previous_state_backup": safety,
                "archive_created": manifest.get("created"),
                "archive_host": manifest.get("host"),
                "same_machine": manifest.get("machine_id") == archive.machine_id(),
            }
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))

    async def _swap_databases(self, staging: str, manifest: dict[str, Any]) -> list[str]:
        names = [f["name"] for f in manifest["files"] if f["name"].startswith("state/")]
        owners = {os.path.basename(db.path): (owner, db) for owner, db in self.databases()}
        restored = []
        for name in names:
            base = os.path.basename(name)
            owner, db = owners.get(base, (None, None))
            if db is not None:
                await _close(owner, db)
            try:
                await anyio.to_thread.run_sync(
                    _replace_db, os.path.join(staging, name), os.path.join(self.state_dir, base)
                )
                restored.append(base)
            finally:
                if db is not None:
                    await _reopen(owner, db)
        return restored


def _replace_db(source: str, target: str) -> None:
    tmp = f"{target}.restore-tmp"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o600)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target + suffix)
    os.replace(tmp, target)


async def _close(owner: Any, db: Database) -> None:
    stop = getattr(owner, "stop", None)
    if callable(getattr(owner, "open", None)) and callable(stop):
        await stop()
    else:
        await db.close()


async def _reopen(owner: Any, db: Database) -> None:
    reopen = getattr(owner, "open", None)
    if callable(reopen):
        await reopen()
    else:
        await db.open()
