"""The backup service in-process: scheduled backups with retention, database upkeep."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cortexd.backup.service import BackupService
from cortexd.config.schema import BackupConfig
from cortexd.store import Database, Migration, Stores

DAY = 86400.0


def _stores(*dbs: Database) -> Stores:
    stores = Stores()
    for db in dbs:
        stores.add(db)
    return stores


def _kept(state: Path) -> list[Path]:
    return sorted((state / "backups").glob("scheduled-*.tar.gz"))


def _size(path: str) -> int:
    return os.path.getsize(path)


async def _pragma(db: Database, name: str) -> str:
    # Through the owner's connection: it holds the file exclusively.
    return str(await db.read(lambda c: c.execute(f"PRAGMA {name}").fetchone()[0]))


def _daemon(state: Path, config: BackupConfig) -> Any:
    return SimpleNamespace(
        config=SimpleNamespace(state_dir=str(state), backup=config),
        loaded=SimpleNamespace(sources=()),
    )


async def test_daily_backups_are_kept_and_pruned(tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = Database(str(state / "things.db"), [Migration(1, "CREATE TABLE t (v TEXT)")])
    await db.open()
    try:
        now = [time.time()]  # file mtimes are real: the clock starts at real time
        cfg = BackupConfig(schedule="daily", retention_days=2, upkeep_interval_hours=0)
        service = BackupService(
            _daemon(state, cfg),
            list,
            _stores(db),
            config_dir=str(tmp_path / "none"),
            clock=lambda: now[0],
        )
        await service.tick()
        await service.tick()  # the same day: no second backup
        kept = _kept(state)
        assert len(kept) == 1
        old = kept[0]
        os.utime(old, (now[0] - 3 * DAY, now[0] - 3 * DAY))
        now[0] += DAY
        await service.tick()
        kept = _kept(state)
        assert len(kept) == 1 and kept[0] != old
    finally:
        await db.close()


async def test_upkeep_checkpoints_and_vacuums(tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = Database(str(state / "things.db"), [Migration(1, "CREATE TABLE t (v TEXT)")])
    await db.open()
    try:
        await db.run(lambda c: c.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 2000))
        await db.run(lambda c: c.execute("DELETE FROM t"))
        wal = f"{db.path}-wal"
        assert _size(wal) > 0
        service = BackupService(
            _daemon(state, BackupConfig()), list, _stores(db), config_dir=str(tmp_path / "none")
        )
        done = await service.upkeep(vacuum=True)
        assert done == ["things.db"]
        assert _size(wal) == 0
        # VACUUM left no free pages behind from the deleted rows.
        assert await _pragma(db, "freelist_count") == "0"
        assert await _pragma(db, "integrity_check") == "ok"
    finally:
        await db.close()
