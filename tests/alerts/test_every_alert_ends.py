"""Every place that raises an alert, and how each of its alerts ends.

The first test reads the daemon's source and finds every call that raises an
alert (`.notice(`). Each must be listed in `SITES` with the way its alerts
resolve, so an alert source added later cannot create alerts that nothing
ends. The tests after it drive each site through the real code (real SQLite,
real alert manager, a stepped clock) and show the resolution happen.
"""

from __future__ import annotations

import ast
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.methods import alert_methods
from cortexd.alerts.model import ListFilter
from cortexd.config.schema import Config, HealingConfig, LogsConfig
from cortexd.logs.journal import normalize
from cortexd.logs.watcher import CursorFile, JournalWatcher
from cortexd.monitor.check import Check, Finding
from cortexd.monitor.scheduler import Monitor
from cortexd.monitor.thresholds import Thresholds
from cortexd.server import Call
from cortexd.server.call import Peer
from cortexd.store import Stores
from cortexd.updates.service import UpdateService
from tests.alerts.conftest import FakeClock, make_manager
from tests.daemon import running_daemon
from tests.healing.test_healing import Clock, Systemd, make_healer, poll
from tests.plugins.conftest import write_plugin
from tests.repair.test_manager import _manager

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.01

# (module, function) -> how the alerts raised there end, and how many raise calls it has.
SITES: dict[tuple[str, str], tuple[str, int]] = {
    ("cortexd/monitor/scheduler.py", "_publish_findings"): (
        "its condition clears: the check passes, the subject vanishes (also while the daemon"
        " was down), or the check no longer runs (removed, disabled, its plugin unloaded)",
        1,
    ),
    ("cortexd/monitor/scheduler.py", "_publish_errors"): (
        "the check runs again (also after a restart), or no longer runs",
        1,
    ),
    ("cortexd/healing/loop.py", "_give_up"): (
        "the unit is no longer failed (also after a restart), leaves healing.allow/deny,"
        " or self-healing is turned off",
        1,
    ),
    ("cortexd/updates/service.py", "_report"): (
        "applied: an event (alerts.event_ttl_seconds); failed: the next successful apply",
        2,
    ),
    ("cortexd/updates/system.py", "_report"): ("an event (alerts.event_ttl_seconds)", 1),
    ("cortexd/inference/alerting.py", "_deliver"): (
        "a runner serves that model or another one again, or the model is unloaded",
        1,
    ),
    ("cortexd/repair/manager.py", "_record"): ("an event (alerts.event_ttl_seconds)", 1),
    ("cortexd/logs/watcher.py", "_notice"): ("an event (alerts.event_ttl_seconds)", 1),
    ("cortexd/alerts/methods.py", "raise_"): (
        "alerts.resolve by id or key, or its own ttl_seconds",
        1,
    ),
}


def raise_sites() -> dict[tuple[str, str], int]:
    """Every `….notice(...)` call in the daemon, by (module, enclosing function)."""
    found: dict[tuple[str, str], int] = {}
    for path in sorted((ROOT / "cortexd").rglob("*.py")):
        module = str(path.relative_to(ROOT))
        if module == "cortexd/alerts/manager.py":
            continue  # the definition, not a raise site
        tree = ast.parse(path.read_text(), module)
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "notice"
                ):
                    key = (module, func.name)
                    found[key] = found.get(key, 0) + 1
    # A call inside a nested function counts for both; keep the innermost.
    return {
        k: n
        for k, n in found.items()
        if not any(o != k and o[0] == k[0] and _nested(k, o) for o in found)
    }


def _nested(outer: tuple[str, str], inner: tuple[str, str]) -> bool:
    tree = ast.parse((ROOT / outer[0]).read_text())
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef) and func.name == outer[1]:
            return any(
                isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == inner[1]
                for n in ast.walk(func)
                if n is not func
            )
    return False


def test_every_raise_site_says_how_its_alerts_end() -> None:
    found = raise_sites()
    unlisted = sorted(set(found) - set(SITES))
    assert not unlisted, f"raise sites with no way to end their alerts listed: {unlisted}"
    stale = sorted(set(SITES) - set(found))
    assert not stale, f"listed raise sites that no longer exist: {stale}"
    for site, count in found.items():
        assert SITES[site][1] == count, f"{site}: {count} raise calls, {SITES[site][1]} listed"


# -- the monitor -----------------------------------------------------------------------


class Disk(Check):
    """A check whose finding the test sets: a value, or no subject at all."""

    category = "test"
    thresholds = Thresholds(80, 75, 90, 85, samples=1)

    def __init__(self, check_id: str = "disk") -> None:
        self.id = self.name = check_id
        self.value: float | Exception | None = 50.0

    def collect(self) -> list[Finding]:
        if isinstance(self.value, Exception):
            raise self.value
        if self.value is None:
            return []
        return [Finding(f"{self.value:g}% used", value=self.value, labels={"mountpoint": "/x"})]


@pytest.fixture
async def alerts(tmp_path: Path, clock: FakeClock) -> AsyncIterator[AlertManager]:
    manager = make_manager(tmp_path / "alerts.db", clock)
    await manager.open()
    yield manager
    await manager.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def monitor_of(checks: list[Check], alerts: AlertManager) -> Monitor:
    return Monitor(Config(), lambda c: list(checks), alerts, clock=alerts.clock)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll `check` (a background task is expected to make it true) until `within`."""
    for _ in range(int(within / POLL)):
        if await check():
            return
        await anyio.sleep(POLL)
    raise AssertionError("timed out")


async def all_resolved(alerts: AlertManager) -> bool:
    return all(state == "resolved" for _, state in await states(alerts))


async def states(alerts: AlertManager, source: str | None = None) -> list[tuple[str, str]]:
    found = await alerts.query(ListFilter(include_cleared=True, limit=1000))
    return [(a.source, a.state) for a in found if source is None or a.source == source]


async def test_a_finding_resolves_when_it_passes_with_the_value_at_resolution(
    alerts: AlertManager,
) -> None:
    check = Disk()
    monitor = monitor_of([check], alerts)
    check.value = 93.0
    await monitor.run_check(check)
    check.value = 41.0
    await monitor.run_check(check)
    (alert,) = await alerts.query(ListFilter(states=("resolved",)))
    assert alert.description == "41% used"
    assert alert.annotations["value"] == 41.0


async def test_a_finding_whose_subject_vanished_while_down_resolves_at_the_first_run(
    tmp_path: Path, clock: FakeClock
) -> None:
    first = make_manager(tmp_path / "a.db", clock)
    await first.open()
    check = Disk()
    check.value = 95.0
    await monitor_of([check], first).run_check(check)
    await first.stop()
    second = make_manager(tmp_path / "a.db", clock)
    await second.open()
    check.value = None  # unmounted while the daemon was down
    monitor = monitor_of([check], second)
    async with anyio.create_task_group() as tg:
        await monitor.start(tg)
        await monitor.run_check(check)
        tg.cancel_scope.cancel()
    assert await states(second) == [("disk", "resolved")]
    await second.stop()


async def test_alerts_of_a_check_that_no_longer_runs_resolve(alerts: AlertManager) -> None:
    disk, probe = Disk(), Disk("probe")
    checks: list[Check] = [disk, probe]
    monitor = monitor_of(checks, alerts)
    disk.value = 95.0
    probe.value = RuntimeError("probe broke")
    for _ in range(3):
        await monitor.run_check(disk)
        await monitor.run_check(probe)
    assert sorted(await states(alerts)) == [("disk", "firing"), ("monitor", "firing")]
    async with anyio.create_task_group() as tg:
        await monitor.start(tg)
        checks.clear()  # both removed (a plugin disabled, a check turned off)
        monitor.refresh_checks()
        await eventually(lambda: all_resolved(alerts))
        tg.cancel_scope.cancel()
    resolved = await alerts.query(ListFilter(states=("resolved",)))
    assert all("no longer runs" in a.description for a in resolved)


async def test_a_check_that_kept_failing_clears_when_it_runs_again_after_a_restart(
    tmp_path: Path, clock: FakeClock
) -> None:
    first = make_manager(tmp_path / "a.db", clock)
    await first.open()
    probe = Disk("probe")
    probe.value = RuntimeError("probe broke")
    monitor = monitor_of([probe], first)
    for _ in range(3):
        await monitor.run_check(probe)
    await first.stop()
    second = make_manager(tmp_path / "a.db", clock)
    await second.open()
    probe.value = 10.0
    again = monitor_of([probe], second)
    async with anyio.create_task_group() as tg:
        await again.start(tg)
        await again.run_check(probe)
        tg.cancel_scope.cancel()
    assert await states(second, "monitor") == [("monitor", "resolved")]
    await second.stop()


# -- self-healing -------------------------------------------------------------------------


@pytest.fixture
async def repair_db(tmp_path: Path) -> AsyncIterator[Any]:
    from cortexd.repair.store import MIGRATIONS
    from cortexd.store import Database

    db = Database(str(tmp_path / "repair.db"), MIGRATIONS)
    await db.open()
    yield db
    await db.close()


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Systemd:
    from tests.healing.test_healing import STUB

    stub = Systemd(tmp_path / "systemd")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(STUB)
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("SYSTEMCTL_STUB", str(stub.root))
    return stub


async def give_up(systemd: Systemd, alerts: AlertManager, db: Any, unit: str) -> Any:
    clock = Clock()
    systemd.fail(unit, behaviour="crash")
    healer = make_healer(systemd, alerts, db, clock, settle_seconds=0, max_attempts=1)
    await poll(healer)
    clock.now += 100
    await poll(healer)
    assert unit in healer.state()["given_up"]
    return healer


async def test_a_given_up_unit_resolves_when_it_recovers_after_a_restart(
    systemd: Systemd, alerts: AlertManager, repair_db: Any
) -> None:
    await give_up(systemd, alerts, repair_db, "db.service")
    assert await states(alerts, "healing") == [("healing", "firing")]
    # The daemon restarts (a new healer), then an operator fixes the unit.
    healer = make_healer(systemd, alerts, repair_db, Clock())
    (systemd.root / "state/db.service").write_text("active\n")
    async with anyio.create_task_group() as tg:
        await healer.start(tg)  # it polls in the background from here
        await eventually(lambda: all_resolved(alerts))
        tg.cancel_scope.cancel()
    assert await states(alerts, "healing") == [("healing", "resolved")]


async def test_a_given_up_unit_resolves_when_healing_is_turned_off_or_denied(
    systemd: Systemd, alerts: AlertManager, repair_db: Any
) -> None:
    healer = await give_up(systemd, alerts, repair_db, "a.service")
    await give_up(systemd, alerts, repair_db, "b.service")
    healer = make_healer(systemd, alerts, repair_db, Clock(), deny=("a",))
    async with anyio.create_task_group() as tg:
        await healer.start(tg)  # it polls in the background from here

        async def one_resolved() -> bool:
            return sorted(await states(alerts, "healing")) == [
                ("healing", "firing"),
                ("healing", "resolved"),
            ]

        await eventually(one_resolved)  # a.service is denied now: nothing heals it
        off = Config(healing=HealingConfig(enabled=False))
        healer.apply_config(off)
        await eventually(lambda: all_resolved(alerts))
        tg.cancel_scope.cancel()
    found = await alerts.query(ListFilter(states=("resolved",)))
    assert sorted(a.description for a in found) == [
        "a.service is no longer healed (healing.allow/deny)",
        "self-healing is turned off (healing.enabled)",
    ]


# -- updates, repair, the journal watcher: events ----------------------------------------


async def expire(alerts: AlertManager, clock: FakeClock) -> None:
    clock.step(alerts.config.event_ttl_seconds + 1)
    await alerts.run_timers()


async def test_updates_applied_is_an_event_and_a_later_apply_ends_a_failure(
    tmp_path: Path, alerts: AlertManager, clock: FakeClock
) -> None:
    daemon = SimpleNamespace(config=Config(state_dir=str(tmp_path)))
    service = UpdateService(daemon, alerts, list, Stores())  # type: ignore[arg-type]
    packages: Any = [SimpleNamespace(package="openssl")]
    await service._report(100, packages, ["E: broken"], None)
    clock.step(60)
    await service._report(0, packages, [], "snap1")
    found = {a.title: a.state for a in await alerts.query(ListFilter(include_cleared=True))}
    assert found == {
        "package update failed (exit 100)": "resolved",
        "1 package update(s) applied": "firing",
    }
    await expire(alerts, clock)
    assert [s for _, s in await states(alerts)] == ["resolved", "resolved"]


async def test_a_fix_applied_is_an_event(
    tmp_path: Path, alerts: AlertManager, clock: FakeClock
) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/lock").write_text("77\n")
    manager = await _manager(tmp_path, root, alerts)
    await manager.apply(manager.fixes["clear_apt_locks"], None, confirm=False, requested_by="t")
    await manager.db.close()
    assert await states(alerts, "repair") == [("repair", "firing")]
    (alert,) = await alerts.query(ListFilter())
    assert alert.expires_at == clock.now + alerts.config.event_ttl_seconds
    await expire(alerts, clock)
    assert await states(alerts, "repair") == [("repair", "resolved")]


class FakeJournal:
    """Hands the watcher a list of entries once, like a journal with new lines."""

    backend = "test"

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries

    def available(self) -> str | None:
        return None

    def last_cursor(self) -> str:
        return "c0"

    def forward(self, query: Any) -> list[dict[str, Any]]:
        out, self.entries = self.entries, []
        return out


async def test_a_journal_match_is_an_event(
    tmp_path: Path, alerts: AlertManager, clock: FakeClock
) -> None:
    raw = {
        "MESSAGE": "Out of memory: Killed process 1234 (java)",
        "PRIORITY": "3",
        "_SYSTEMD_UNIT": "java.service",
        "__CURSOR": "c1",
        "__REALTIME_TIMESTAMP": "1700000000000000",
    }
    journal = FakeJournal([normalize(raw)])
    cursor = CursorFile(str(tmp_path / "cursor"))
    watcher = JournalWatcher(journal, alerts, LogsConfig(), cursor)  # type: ignore[arg-type]
    watcher._position = "c0"
    await watcher.poll()
    assert await states(alerts, "journal") == [("journal", "firing")]
    await expire(alerts, clock)
    assert await states(alerts, "journal") == [("journal", "resolved")]


# -- alerts.raise ----------------------------------------------------------------------------


async def call(alerts: AlertManager, method: str, params: dict[str, Any]) -> Any:
    found = {m.name: m for m in alert_methods(alerts)}[method]
    peer = Peer(pid=1, uid=0, gid=0)
    return await found.handler(Call(method, found.bind(params), peer, 1, is_admin=True))


async def test_raised_alerts_end_by_id_by_key_or_by_their_ttl(
    alerts: AlertManager, clock: FakeClock
) -> None:
    by_id = await call(alerts, "alerts.raise", {"title": "disk array degraded"})
    by_key = await call(alerts, "alerts.raise", {"title": "backup late", "key": "backup"})
    by_ttl = await call(alerts, "alerts.raise", {"title": "certs renewed", "ttl_seconds": 60})
    await call(alerts, "alerts.resolve", {"id": by_id["alert"]["id"]})
    await call(alerts, "alerts.resolve", {"key": "backup"})
    clock.step(61)
    await alerts.run_timers()
    ended = {a.id: a.state for a in await alerts.query(ListFilter(include_cleared=True))}
    assert ended == {x["alert"]["id"]: "resolved" for x in (by_id, by_key, by_ttl)}


# -- plugins: their alerts end with them ------------------------------------------------------

FAILING = """
def check(settings):
    return {"status": "FAIL", "message": "the service is down", "labels": {"service": "web"}}
"""


@pytest.mark.slow
def test_a_plugins_alerts_resolve_when_it_is_disabled_or_removed(tmp_path: Path) -> None:
    base = tmp_path / "plugins"
    base.mkdir()
    write_plugin(base, "web_probe", FAILING)
    quiet = {f: {"enabled": False} for f in Config().checks.__dataclass_fields__}
    config = {
        "checks": quiet,
        "state_dir": str(tmp_path / "state"),
        "plugins": {"directory": str(base), "timeout_seconds": 5.0},
    }

    def plugin_alerts(d: Any) -> list[tuple[str, str]]:
        found = d.call("alerts.list", {"state": "all"})["alerts"]
        return [(a["source"], a["state"]) for a in found if a["source"] == "plugin_web_probe"]

    with running_daemon(config) as d:
        d.call("checks.run", {"ids": ["plugin_web_probe"]})
        assert plugin_alerts(d) == [("plugin_web_probe", "firing")]
        d.call("plugins.disable", {"name": "web_probe"})
        _wait(lambda: plugin_alerts(d) == [("plugin_web_probe", "resolved")])
        d.call("plugins.enable", {"name": "web_probe"})
        d.call("checks.run", {"ids": ["plugin_web_probe"]})
        assert ("plugin_web_probe", "firing") in plugin_alerts(d)
        state_dir = d.state_dir
    # Removed while the daemon was down: its alert ends at the next start.
    shutil.rmtree(base / "web_probe")
    with running_daemon({**config, "state_dir": state_dir}) as d:
        _wait(lambda: all(s == "resolved" for _, s in plugin_alerts(d)))
        assert plugin_alerts(d)


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
