"""The repair manager in-process: pre_fix vetoes, post_fix sees the outcome, runs are
recorded, and auto_fix_safe applies safe fixes (never confirm ones) after a failing check."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.store import MIGRATIONS as ALERT_MIGRATIONS
from cortexd.config.schema import AlertsConfig, Config, RepairConfig
from cortexd.host.systemd import HostLayout
from cortexd.monitor.scheduler import Monitor
from cortexd.plugins.hooks import HookRegistry
from cortexd.repair.apt import AptLocks, ClearAptLocks, DpkgConfigure
from cortexd.repair.manager import FixVetoed, RepairManager
from cortexd.repair.runner import FixRunner
from cortexd.repair.store import MIGRATIONS
from cortexd.store import Database

NOT_PID1 = HostLayout(systemd_runtime="/nonexistent/systemd", system_bus="/nonexistent/bus")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/lock").write_text("77\n")
    return tmp_path


@pytest.fixture
async def alerts(tmp_path: Path) -> AsyncIterator[AlertManager]:
    manager = AlertManager(Database(str(tmp_path / "alerts.db"), ALERT_MIGRATIONS), AlertsConfig())
    await manager.open()
    yield manager
    await manager.stop()


def _config(tmp_path: Path, **repair: Any) -> Config:
    return Config(state_dir=str(tmp_path), repair=RepairConfig(**repair))


async def _manager(
    tmp_path: Path, root: Path, alerts: AlertManager, monitor: Monitor | None = None, **repair: Any
) -> RepairManager:
    runner = FixRunner(layout=NOT_PID1)
    fixes = [ClearAptLocks(runner, str(root)), DpkgConfigure(runner, str(root))]
    manager = RepairManager(
        _config(tmp_path, **repair),
        fixes,
        Database(str(tmp_path / "repair.db"), MIGRATIONS),
        alerts,
        runner,
        hooks=HookRegistry(timeout=2.0),
        monitor=monitor,
    )
    await manager.db.open()
    return manager


async def test_pre_fix_veto_stops_the_fix_and_post_fix_sees_outcomes(
    tmp_path: Path, root: Path, alerts: AlertManager
) -> None:
    manager = await _manager(tmp_path, root, alerts)
    seen: list[dict[str, Any]] = []

    async def veto(payload: dict[str, Any]) -> Any:
        return "maintenance window closed" if payload["fix_id"] == "clear_apt_locks" else None

    async def broken(payload: dict[str, Any]) -> Any:
        raise RuntimeError("a hook bug must not block fixes")

    async def after(payload: dict[str, Any]) -> None:
        seen.append(payload)

    manager.hooks.add("pre_fix", broken, priority=10, owner="buggy")
    manager.hooks.add("pre_fix", veto, owner="change-freeze")
    manager.hooks.add("post_fix", after, owner="audit")
    with pytest.raises(FixVetoed, match="change-freeze: maintenance window closed"):
        await manager.apply(
            manager.fixes["clear_apt_locks"], None, confirm=False, requested_by="test"
        )
    assert (root / "var/lib/dpkg/lock").exists()
    assert await manager.history(10) == []

    manager.hooks.remove_owner("change-freeze")
    done = await manager.apply(
        manager.fixes["clear_apt_locks"], None, confirm=False, requested_by="test"
    )
    assert done["outcome"]["ok"]
    assert not (root / "var/lib/dpkg/lock").exists()
    assert seen[0]["outcome"]["fix_id"] == "clear_apt_locks"
    [run] = await manager.history(10)
    assert run["requested_by"] == "test"
    assert run["steps"][0]["path"].endswith("var/lib/dpkg/lock")
    await manager.db.close()


async def test_auto_fix_safe_applies_safe_fixes_after_a_failing_check(
    tmp_path: Path, root: Path, alerts: AlertManager
) -> None:
    config = _config(tmp_path, auto_fix_safe=True)
    monitor = Monitor(config, lambda c: [AptLocks(str(root))], alerts)
    manager = await _manager(tmp_path, root, alerts, monitor, auto_fix_safe=True)
    async with anyio.create_task_group() as tg:
        await manager.start(tg)
        first = await monitor.run_check(monitor.checks["apt_locks"])
        assert first.status.value == "FAIL"
        deadline = time.monotonic() + 30
        while (root / "var/lib/dpkg/lock").exists():
            assert time.monotonic() < deadline, "the safe fix was never applied"
            await anyio.sleep(0.05)
        while not await manager.history(10):
            assert time.monotonic() < deadline
            await anyio.sleep(0.05)
        [run] = await manager.history(10)
        assert run["requested_by"] == "auto_fix_safe (apt_locks)"
        assert run["verified"] is True
        await manager.stop()
        tg.cancel_scope.cancel()


async def test_without_auto_fix_safe_nothing_is_applied(
    tmp_path: Path, root: Path, alerts: AlertManager
) -> None:
    config = _config(tmp_path)
    monitor = Monitor(config, lambda c: [AptLocks(str(root))], alerts)
    manager = await _manager(tmp_path, root, alerts, monitor)
    async with anyio.create_task_group() as tg:
        await manager.start(tg)
        await monitor.run_check(monitor.checks["apt_locks"])
        await anyio.sleep(0.2)
        assert (root / "var/lib/dpkg/lock").exists()
        assert await manager.history(10) == []
        manager.apply_config(dataclasses.replace(config, repair=RepairConfig(auto_fix_safe=True)))
        assert manager.config.repair.auto_fix_safe
        await manager.stop()
        tg.cancel_scope.cancel()
