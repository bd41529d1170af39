"""Alert ids by unique prefix: a real alert database, with ids made to collide on purpose."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cortexd.alerts.ids import MIN_PREFIX, AlertLookup, resolve_id
from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Severity
from cortexd.protocol import InvalidParams, NotFound
from tests.alerts.conftest import FakeClock, make_manager


async def _raise(manager: AlertManager, name: str) -> str:
    alert = await manager.notice(
        source="test",
        labels={"name": name},
        severity=Severity.WARNING,
        category="system",
        title=name,
        description="",
    )
    return alert.id


async def test_a_unique_prefix_names_its_alert(manager: AlertManager) -> None:
    first = await _raise(manager, "a")
    await _raise(manager, "b")
    assert await resolve_id(manager, first[:MIN_PREFIX]) == first
    assert await resolve_id(manager, first[:13].upper()) == first
    assert await resolve_id(manager, first) == first
    assert (await AlertLookup(manager).find(first[:MIN_PREFIX])).id == first


async def test_short_or_unknown_ids_are_not_guessed(manager: AlertManager) -> None:
    first = await _raise(manager, "a")
    # Fewer than 8 characters is never a prefix; the manager answers NOT_FOUND.
    assert await resolve_id(manager, first[:7]) == first[:7]
    with pytest.raises(NotFound):
        await AlertLookup(manager).find(first[:7])
    with pytest.raises(NotFound):
        await AlertLookup(manager).find("ffffffff-0000")
    assert await resolve_id(manager, "no-such-alert") == "no-such-alert"


async def test_an_ambiguous_prefix_lists_the_candidates(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "alerts.db"
    manager = make_manager(path, clock)
    await manager.open()
    ids = [await _raise(manager, name) for name in ("a", "b", "c")]
    await manager.stop()
    # Two ids that share their first 9 characters, as uuid4 ids rarely but really do.
    twins = ["abcdef01-1111-4111-8111-111111111111", "abcdef01-2222-4222-8222-222222222222"]
    with sqlite3.connect(path) as db:
        for old, new in zip(ids, twins, strict=False):
            db.execute("UPDATE alerts SET id = ? WHERE id = ?", (new, old))
    db.close()
    manager = make_manager(path, clock)
    await manager.open()
    try:
        with pytest.raises(InvalidParams) as caught:
            await resolve_id(manager, "abcdef01", "alert_id")
        assert caught.value.data["candidates"] == twins
        assert caught.value.data["param"] == "alert_id"
        assert twins[0] in caught.value.message and twins[1] in caught.value.message
        assert await resolve_id(manager, "abcdef01-2") == twins[1]
        assert (await AlertLookup(manager).find(ids[2][:8])).id == ids[2]
    finally:
        await manager.stop()
