"""Alert-manager fixtures: a real SQLite file and a clock the test steps by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.store import MIGRATIONS
from cortexd.config.schema import AlertsConfig
from cortexd.store import Database


class FakeClock:
    """Wall time that moves only when the test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_manager(path: Path, clock: FakeClock, **config: float) -> AlertManager:
    db = Database(str(path), MIGRATIONS)
    return AlertManager(db, AlertsConfig(**config), clock=clock, host="testhost")  # type: ignore[arg-type]


@pytest.fixture
async def manager(tmp_path: Path, clock: FakeClock) -> AsyncIterator[AlertManager]:
    mgr = make_manager(tmp_path / "alerts.db", clock)
    await mgr.open()
    yield mgr
    await mgr.stop()
