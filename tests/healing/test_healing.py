"""The healing loop against a stub `systemctl` on PATH, with a fake clock.

PID 1 on the development and CI machines is not systemd, so the real
`systemctl` cannot restart anything here: a shell script stands in for it
(it keeps each unit's state in a file and logs every call), and a directory
stands in for /run/systemd/system. Everything else is real: the healer runs
the script as a subprocess, writes the log to a real SQLite file and raises
alerts through the real alert manager.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import ListFilter, Severity
from cortexd.alerts.store import MIGRATIONS as ALERT_MIGRATIONS
from cortexd.config.schema import AlertsConfig, Config, HealingConfig
from cortexd.healing.loop import Healer
from cortexd.healing.metrics import RepairCollector
from cortexd.host.systemd import HostLayout
from cortexd.repair.store import MIGRATIONS, add_healing, healing_log
from cortexd.store import Database

STUB = r"""#!/bin/sh
d="$SYSTEMCTL_STUB"
echo "$*" >> "$d/calls"
case "$1" in
  list-units)
    for f in "$d"/state/*; do
      [ -e "$f" ] || continue
      if [ "$(cat "$f")" = failed ]; then echo "$(basename "$f") loaded failed failed stub"; fi
    done ;;
  restart)
    u="$3"; b=$(cat "$d/behaviour/$u" 2>/dev/null || echo ok)
    case "$b" in
      ok) echo active > "$d/state/$u" ;;
      refuse) echo "Job for $u failed because the control process exited." >&2; exit 1 ;;
      *) echo activating > "$d/state/$u" ;;
    esac ;;
  is-active)
    u="$3"; s=$(cat "$d/state/$u")
    if [ "$s" = activating ]; then echo failed > "$d/state/$u"; s=failed; fi
    echo "$s"; [ "$s" = active ] ;;
esac
"""


class Clock:
    """Time that moves only when the healer sleeps."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class Systemd:
    """The stub's state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("state", "behaviour", "run/systemd/system"):
            (root / sub).mkdir(parents=True)
        (root / "calls").touch()

    def fail(self, unit: str, behaviour: str = "ok") -> None:
        (self.root / "state" / unit).write_text("failed\n")
        (self.root / "behaviour" / unit).write_text(behaviour + "\n")

    def state(self, unit: str) -> str:
        return (self.root / "state" / unit).read_text().strip()

    def restarts(self, unit: str) -> int:
        calls = (self.root / "calls").read_text().splitlines()
        return calls.count(f"restart -- {unit}")


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Systemd:
    stub = Systemd(tmp_path / "systemd")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(STUB)
    os.chmod(bindir / "systemctl", 0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("SYSTEMCTL_STUB", str(stub.root))
    return stub


@pytest.fixture
async def alerts(tmp_path: Path) -> AsyncIterator[AlertManager]:
    manager = AlertManager(Database(str(tmp_path / "alerts.db"), ALERT_MIGRATIONS), AlertsConfig())
    await manager.open()
    yield manager
    await manager.stop()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(str(tmp_path / "repair.db"), MIGRATIONS)
    await database.open()
    yield database
    await database.close()


def make_healer(
    systemd: Systemd, alerts: AlertManager, db: Database, clock: Clock, **settings: Any
) -> Healer:
    config = Config(healing=HealingConfig(enabled=True, **settings))

    async def record(entry: dict[str, Any]) -> None:
        await db.run(lambda c: add_healing(c, entry))

    layout = HostLayout(systemd_runtime=str(systemd.root / "run/systemd/system"))
    return Healer(config, alerts, record, layout=layout, clock=clock, sleep=clock.sleep)


async def poll(healer: Healer) -> list[str]:
    """One poll; returns once every healing it started has finished."""
    async with anyio.create_task_group() as tg:
        started = await healer.tick(tg)
    return started


async def log_of(db: Database) -> list[dict[str, Any]]:
    return list(reversed(await db.read(lambda c: healing_log(c, None, 100))))


async def test_a_failed_unit_is_restarted_verified_and_logged(
    systemd: Systemd, alerts: AlertManager, db: Database
) -> None:
    clock = Clock()
    systemd.fail("web.service")
    healer = make_healer(systemd, alerts, db, clock, settle_seconds=15)
    assert await poll(healer) == ["web.service"]
    assert systemd.state("web.service") == "active"
    assert clock.slept[0] == 15  # the settle time before verifying
    [entry] = await log_of(db)
    assert entry["unit"] == "web.service"
    assert entry["action"] == "restart"
    assert entry["result"] == "success"
    assert entry["attempt"] == 1
    assert entry["duration_ms"] >= 15_000
    assert healer.counts == {"attempts": 1, "successes": 1, "failures": 0, "given_up": 0}
    registry = CollectorRegistry()
    repair = SimpleNamespace(applied={"restart_unit": 2}, failed={})
    registry.register(RepairCollector(repair, healer))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert "cortex_healing_attempts_total 1.0" in text
    assert "cortex_healing_successes_total 1.0" in text
    assert "cortex_healing_duration_seconds_count 1.0" in text
    assert 'cortex_repairs_total{fix="restart_unit",result="ok"} 2.0' in text
    assert await poll(healer) == []  # healthy now: nothing to do


async def test_failures_back_off_exponentially_then_the_unit_is_given_up(
    systemd: Systemd, alerts: AlertManager, db: Database
) -> None:
    clock = Clock()
    systemd.fail("db.service", behaviour="crash")  # starts, then dies before verification
    healer = make_healer(
        systemd,
        alerts,
        db,
        clock,
        settle_seconds=5,
        verify_timeout_seconds=3,
        backoff_seconds=10,
        backoff_max_seconds=30,
        max_attempts=3,
        window_seconds=3600,
    )
    assert await poll(healer) == ["db.service"]
    done = clock.now
    assert await poll(healer) == []  # within the first backoff (10 s)
    clock.now = done + 10
    assert await poll(healer) == ["db.service"]
    done = clock.now
    clock.now = done + 19
    assert await poll(healer) == []  # the backoff doubled to 20 s
    clock.now = done + 20
    assert await poll(healer) == ["db.service"]
    assert systemd.restarts("db.service") == 3
    done = clock.now
    clock.now = done + 29
    assert await poll(healer) == []  # 40 s, capped at backoff_max_seconds (30 s)
    clock.now = done + 30
    assert await poll(healer) == ["db.service"]  # max attempts reached: this pass gives up
    assert systemd.restarts("db.service") == 3
    assert "db.service" in healer.state()["given_up"]
    clock.now += 1000
    assert await poll(healer) == []
    assert systemd.restarts("db.service") == 3

    log = await log_of(db)
    assert [(e["action"], e["result"], e["attempt"]) for e in log] == [
        ("restart", "failed", 1),
        ("restart", "failed", 2),
        ("restart", "failed", 3),
        ("give_up", "given_up", 3),
    ]
    assert "not active 3s after settling (failed)" in log[0]["message"]
    assert [e["message"].rsplit("next attempt in ", 1)[-1] for e in log[:3]] == [
        "10s at the earliest",
        "20s at the earliest",
        "30s at the earliest",
    ]
    alerts_now = await alerts.query(ListFilter(states=("firing",)))
    [alert] = [a for a in alerts_now if a.source == "healing"]
    assert alert.severity is Severity.CRITICAL
    assert "keeps failing" in alert.description

    # An operator fixes it: the alert resolves and the unit may be healed again.
    (systemd.root / "state/db.service").write_text("active\n")
    await poll(healer)
    firing = await alerts.query(ListFilter(states=("firing",)))
    assert not [a for a in firing if a.source == "healing"]
    assert "db.service" not in healer.state()["given_up"]


async def test_the_window_forgets_old_attempts(
    systemd: Systemd, alerts: AlertManager, db: Database
) -> None:
    clock = Clock()
    healer = make_healer(
        systemd, alerts, db, clock, settle_seconds=0, max_attempts=1, window_seconds=100
    )
    systemd.fail("job.service")
    await poll(healer)
    systemd.fail("job.service")
    clock.now += 200  # the first attempt fell out of the window
    assert await poll(healer) == ["job.service"]
    assert systemd.restarts("job.service") == 2
    assert healer.state()["given_up"] == []


async def test_a_refused_restart_is_a_failed_attempt_with_stderr(
    systemd: Systemd, alerts: AlertManager, db: Database
) -> None:
    clock = Clock()
    systemd.fail("bad.service", behaviour="refuse")
    healer = make_healer(systemd, alerts, db, clock)
    await poll(healer)
    [entry] = await log_of(db)
    assert entry["result"] == "failed"
    assert "control process exited" in entry["message"]
    assert clock.slept == []  # nothing to settle after a refused restart


async def test_allow_and_deny_lists(systemd: Systemd, alerts: AlertManager, db: Database) -> None:
    clock = Clock()
    for unit in ("a.service", "b.service", "c.timer"):
        systemd.fail(unit)
    healer = make_healer(systemd, alerts, db, clock, settle_seconds=0, allow=("a", "c.timer"))
    assert sorted(await poll(healer)) == ["a.service", "c.timer"]
    assert systemd.state("b.service") == "failed"
    systemd.fail("a.service")
    healer.apply_config(Config(healing=HealingConfig(enabled=True, deny=("a",), settle_seconds=0)))
    assert await poll(healer) == ["b.service"]


async def test_at_most_max_concurrent_heal_at_once(
    systemd: Systemd, alerts: AlertManager, db: Database
) -> None:
    clock = Clock()
    for i in range(5):
        systemd.fail(f"u{i}.service")
    healer = make_healer(systemd, alerts, db, clock, settle_seconds=1, max_concurrent=2)
    peak = 0
    original = healer._restart_and_verify

    async def counting(unit: str) -> tuple[bool, str]:
        nonlocal peak
        peak = max(peak, healer._limiter.borrowed_tokens)
        await anyio.sleep(0.01)
        return await original(unit)

    healer._restart_and_verify = counting  # type: ignore[method-assign]
    assert len(await poll(healer)) == 5
    assert peak == 2
    assert all(systemd.state(f"u{i}.service") == "active" for i in range(5))


async def test_without_systemd_as_pid1_healing_is_unavailable(
    tmp_path: Path, alerts: AlertManager, db: Database
) -> None:
    async def record(entry: dict[str, Any]) -> None:
        raise AssertionError("nothing may be logged")

    config = Config(healing=HealingConfig(enabled=True))
    healer = Healer(config, alerts, record, layout=HostLayout(str(tmp_path / "none")))
    async with anyio.create_task_group() as tg:
        await healer.start(tg)
    state = healer.state()
    assert state["state"] == "unavailable"
    assert "systemd is not PID 1" in state["reason"]
    disabled = Healer(
        dataclasses.replace(config, healing=HealingConfig(enabled=False)),
        alerts,
        record,
        layout=HostLayout(str(tmp_path)),
    )
    assert disabled.reason == "healing.enabled is false"
