"""An in-process notifier on real SQLite files, with a real alert manager feeding it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.store import MIGRATIONS as ALERT_MIGRATIONS
from cortexd.config.schema import AlertsConfig, Config, NotifyConfig
from cortexd.notify.notifier import Notifier
from cortexd.notify.store import MIGRATIONS
from cortexd.store import Database

Stack = tuple[AlertManager, Notifier]
Factory = Callable[..., AbstractAsyncContextManager[Stack]]


@pytest.fixture
def notify_stack(tmp_path: Path) -> Factory:
    """`async with notify_stack(rules, alerts={...}, **notify_settings) as (alerts, notifier)`."""

    @asynccontextmanager
    async def build(
        rules: dict[str, Any], *, alerts: dict[str, Any] | None = None, **settings: Any
    ) -> AsyncIterator[Stack]:
        rules_path = tmp_path / "alerts.yaml"
        rules_path.write_text(yaml.safe_dump(rules))
        notify = NotifyConfig(rules_path=str(rules_path), instance="web1", **settings)
        config = dataclasses.replace(Config(), notify=notify)
        manager = AlertManager(
            Database(str(tmp_path / "alerts.db"), ALERT_MIGRATIONS),
            AlertsConfig(**(alerts or {})),
            host="web1",
        )
        notifier = Notifier(Database(str(tmp_path / "notify.db"), MIGRATIONS), config, manager)
        async with anyio.create_task_group() as tg:
            await manager.start(tg)
            await notifier.start(tg)
            try:
                yield manager, notifier
            finally:
                await notifier.stop()
                await manager.stop()
                tg.cancel_scope.cancel()

    return build
