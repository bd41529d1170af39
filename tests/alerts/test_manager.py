"""The alert manager's life cycle on real SQLite with a stepped clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cortexd.alerts.manager import AlertCapReached, AlertManager
from cortexd.alerts.model import Alert, ListFilter, Severity, fingerprint
from cortexd.protocol import NotFound
from tests.alerts.conftest import FakeClock, make_manager

DISK = {"mountpoint": "/srv"}


async def fire(
    mgr: AlertManager, severity: Severity = Severity.WARNING, used: float = 81.0
) -> Alert:
    return await mgr.notice(
        source="disk_space",
        labels=DISK,
        severity=severity,
        category="disk_usage",
        title="/srv is filling",
        annotations={"used_percent": used},
    )


async def stored(manager: AlertManager) -> list[sqlite3.Row]:
    """The rows, read through the manager's own connection (it holds the file exclusively)."""
    return await manager.db.read(
        lambda c: c.execute("SELECT * FROM alerts ORDER BY first_seen").fetchall()
    )


def rows(path: Path) -> list[sqlite3.Row]:
    """The rows of a closed database file."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM alerts ORDER BY first_seen").fetchall()
    finally:
        conn.close()


def test_fingerprint_ignores_values_and_label_order() -> None:
    a = fingerprint("disk_space", {"mountpoint": "/", "device": "sda1"})
    b = fingerprint("disk_space", {"device": "sda1", "mountpoint": "/"})
    assert a == b
    assert a != fingerprint("disk_space", {"mountpoint": "/srv", "device": "sda1"})
    assert a != fingerprint("memory", {"mountpoint": "/", "device": "sda1"})


async def test_a_persisting_condition_is_one_alert_with_coalesced_writes(
    manager: AlertManager, clock: FakeClock, tmp_path: Path
) -> None:
    first = await fire(manager)
    for _ in range(30):
        clock.step(1)
        await fire(manager, used=82.0)
    assert (await fire(manager)).id == first.id
    assert first.count == 32
    written = await stored(manager)
    assert len(written) == 1
    # Thirty seconds of updates with no state change: the row was not rewritten.
    assert written[0]["count"] == 1
    clock.step(61)
    await fire(manager)
    assert (await stored(manager))[0]["count"] == 33


async def test_escalates_and_de_escalates_within_one_alert(manager: AlertManager) -> None:
    alert = await fire(manager, Severity.WARNING)
    seen = []
    for severity in (Severity.CRITICAL, Severity.WARNING):
        await fire(manager, severity)
        seen.append(alert.to_dict()["severity"])
    assert seen == ["CRITICAL", "WARNING"]
    listed = await manager.query(ListFilter())
    assert [a.id for a in listed] == [alert.id]


async def test_ack_survives_updates_but_an_escalation_refires(manager: AlertManager) -> None:
    alert = await fire(manager, Severity.WARNING)
    await manager.acknowledge(alert.id, "uid 0")
    await fire(manager, Severity.WARNING)
    assert alert.acknowledged_by == "uid 0"
    states = [alert.to_dict()["state"]]
    await fire(manager, Severity.CRITICAL)
    states.append(alert.to_dict()["state"])
    assert states == ["acknowledged", "firing"]


async def test_clears_resolve_and_refire_reopens_within_window_else_new_row(
    manager: AlertManager, clock: FakeClock, tmp_path: Path
) -> None:
    alert = await fire(manager)
    resolved = await manager.condition_cleared(source="disk_space", labels=DISK)
    assert resolved is not None and resolved.state == "resolved"
    clock.step(60)
    again = await fire(manager)
    assert again.id == alert.id and again.state == "firing"
    assert again.annotations["reopened"] == 1
    await manager.condition_cleared(source="disk_space", labels=DISK)
    clock.step(301)
    later = await fire(manager)
    assert later.id != alert.id
    states = [r["state"] for r in await stored(manager)]
    assert states == ["resolved", "firing"]


async def test_flapping_around_a_level_yields_one_alert(
    manager: AlertManager, clock: FakeClock, tmp_path: Path
) -> None:
    for _ in range(40):
        await fire(manager)
        clock.step(10)
        await manager.condition_cleared(source="disk_space", labels=DISK)
        clock.step(10)
    assert len(await stored(manager)) == 1


async def test_restart_keeps_open_alerts_and_never_duplicates(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "alerts.db"
    first = make_manager(path, clock)
    await first.open()
    alert = await fire(first)
    await first.acknowledge(alert.id, "uid 0")
    for _ in range(5):
        await fire(first)
    await first.stop()
    second = make_manager(path, clock)
    await second.open()
    again = await fire(second)
    assert again.id == alert.id
    assert again.state == "acknowledged"
    assert again.count == 7  # flushed at stop, then one more
    await second.stop()
    assert len(rows(path)) == 1


async def test_ack_resolve_get_unknown_ids(manager: AlertManager) -> None:
    for action in (manager.get, manager.resolve):
        with pytest.raises(NotFound):
            await action("nope")
    with pytest.raises(NotFound):
        await manager.acknowledge("nope", "me")


async def test_ack_all_with_filters_only_touches_matching(manager: AlertManager) -> None:
    disk = await fire(manager, Severity.CRITICAL)
    mem = await manager.notice(
        source="memory", labels={}, severity=Severity.WARNING, category="memory_usage", title="m"
    )
    done = await manager.acknowledge_matching(ListFilter(severity=Severity.CRITICAL), "me")
    assert [a.id for a in done] == [disk.id]
    assert mem.state == "firing"


async def test_clear_hides_acked_and_resolved_but_tracks_the_condition(
    manager: AlertManager, tmp_path: Path
) -> None:
    disk = await fire(manager)
    other = await manager.notice(
        source="memory", labels={}, severity=Severity.WARNING, category="memory_usage", title="m"
    )
    await manager.acknowledge(disk.id, "me")
    assert await manager.clear() == 1
    visible = await manager.query(ListFilter())
    assert [a.id for a in visible] == [other.id]
    # The hidden, acknowledged condition persists: no duplicate appears.
    assert (await fire(manager)).id == disk.id
    assert len(await stored(manager)) == 2
    assert manager.state()["active"] == 1


async def test_active_cap_refuses_new_conditions(tmp_path: Path, clock: FakeClock) -> None:
    mgr = make_manager(tmp_path / "a.db", clock, max_active=2)
    await mgr.open()
    for i in range(2):
        await mgr.notice(
            source="x", labels={"i": str(i)}, severity=Severity.INFO, category="system", title="t"
        )
    with pytest.raises(AlertCapReached):
        await mgr.notice(
            source="x", labels={"i": "9"}, severity=Severity.INFO, category="system", title="t"
        )
    assert mgr.state()["dropped_over_cap"] == 1
    await mgr.stop()


async def test_retention_prunes_old_resolved_alerts(
    manager: AlertManager, clock: FakeClock, tmp_path: Path
) -> None:
    await fire(manager)
    await manager.condition_cleared(source="disk_space", labels=DISK)
    clock.step(31 * 86400)
    assert await manager.prune() == 1
    assert await stored(manager) == []


async def test_silences_match_with_alertmanager_syntax_and_expire(
    manager: AlertManager, clock: FakeClock
) -> None:
    alert = await fire(manager)
    silence = await manager.add_silence(
        ['mountpoint=~"/s.*"', 'severity!="critical"'], 60, "", "me"
    )
    assert manager.is_silenced(alert)
    await fire(manager, Severity.CRITICAL)
    assert not manager.is_silenced(alert)
    await fire(manager, Severity.WARNING)
    clock.step(61)
    assert not manager.is_silenced(alert)
    assert manager.silences() == []
    assert [s.id for s in manager.silences(include_expired=True)] == [silence.id]
    await manager.delete_silence(silence.id)
    with pytest.raises(NotFound):
        await manager.delete_silence(silence.id)
