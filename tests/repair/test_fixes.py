"""Built-in fixes on real files: lock files under a temp root, modes in a temp tree,
dpkg/apt commands injected to stand for broken states."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import pwd
import stat
from collections.abc import Iterator, Sequence
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from cortexd.host.commands import CommandResult
from cortexd.host.systemd import HostLayout
from cortexd.monitor.check import Status
from cortexd.protocol import Unavailable
from cortexd.repair.apt import AptFixBroken, AptLocks, ClearAptLocks, DpkgConfigure
from cortexd.repair.permissions import (
    CortexPermissions,
    RemoveWorldWrite,
    ResetCortexPermissions,
    UserPermissions,
    WorldWritable,
)
from cortexd.repair.runner import FixRunner
from cortexd.repair.system import RestartUnit, VacuumJournal

NOT_PID1 = HostLayout(systemd_runtime="/nonexistent/systemd", system_bus="/nonexistent/bus")


class FakeExec:
    """Answers commands from a table and records them (stands for a broken dpkg/apt)."""

    def __init__(self, answers: dict[str, CommandResult]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.calls.append(list(argv))
        return self.answers.get(" ".join(argv), CommandResult(0, "", ""))


def _hold(path: str, ready: Event, release: Event) -> None:
    fd = os.open(path, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(60)


@pytest.fixture
def apt_root(tmp_path: Path) -> Path:
    for d in ("var/lib/dpkg/updates", "var/lib/apt/lists", "var/cache/apt/archives"):
        (tmp_path / d).mkdir(parents=True)
    for lock in ("var/lib/dpkg/lock", "var/lib/apt/lists/lock", "var/cache/apt/archives/lock"):
        (tmp_path / lock).touch()
    return tmp_path


@pytest.fixture
def held_frontend(apt_root: Path) -> Iterator[Path]:
    """lock-frontend with stale content, locked by a live child process (as apt does)."""
    path = apt_root / "var/lib/dpkg/lock-frontend"
    path.write_text("4242\n")
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(path), ready, release))
    child.start()
    assert ready.wait(30), "the lock-holding child never started"
    try:
        yield path
    finally:
        release.set()
        child.join(30)


def test_a_stale_lock_is_cleared_and_a_held_one_left_alone(
    apt_root: Path, held_frontend: Path
) -> None:
    stale = apt_root / "var/lib/dpkg/lock"
    stale.write_text("999999\n")  # left behind by a crashed tool
    check = AptLocks(str(apt_root))
    [finding] = check.collect()
    assert finding.status is Status.FAIL
    assert str(stale) in finding.message
    assert str(held_frontend) not in finding.details["stale"]
    assert str(held_frontend) in finding.details["held"]

    fix = ClearAptLocks(FixRunner(layout=NOT_PID1), str(apt_root))
    plan = fix.plan(None)
    assert [s.path for s in plan.steps] == [str(stale)]
    assert any(str(held_frontend) in note for note in plan.notes)
    results = fix.apply(plan)
    assert all(r.ok for r in results)
    assert not stale.exists()
    assert held_frontend.read_text() == "4242\n"
    assert check.collect()[0].status is Status.PASS


def test_empty_unheld_lock_files_are_normal(apt_root: Path) -> None:
    assert AptLocks(str(apt_root)).collect()[0].status is Status.PASS
    plan = ClearAptLocks(FixRunner(layout=NOT_PID1), str(apt_root)).plan(None)
    assert plan.steps == ()


def test_dpkg_configure_is_planned_from_dpkg_audit(apt_root: Path) -> None:
    broken = FakeExec(
        {"dpkg --audit": CommandResult(1, "The following packages are only half configured:\n", "")}
    )
    fix = DpkgConfigure(FixRunner(broken, layout=NOT_PID1), str(apt_root))
    plan = fix.plan(None)
    assert [s.argv for s in plan.steps] == [("dpkg", "--configure", "-a")]
    assert "half configured" in plan.summary
    results = fix.apply(plan)
    assert results[0].ok
    assert broken.calls[-1] == ["dpkg", "--configure", "-a"]


def test_dpkg_configure_has_nothing_to_do_on_a_clean_audit(apt_root: Path) -> None:
    fix = DpkgConfigure(FixRunner(FakeExec({}), layout=NOT_PID1), str(apt_root))
    assert fix.plan(None).steps == ()


def test_an_interrupted_dpkg_run_is_planned_even_with_a_quiet_audit(apt_root: Path) -> None:
    (apt_root / "var/lib/dpkg/updates/0001").write_text("")
    fix = DpkgConfigure(FixRunner(FakeExec({}), layout=NOT_PID1), str(apt_root))
    assert fix.plan(None).steps


def test_a_failing_command_is_recorded_with_its_output() -> None:
    check_cmd = "apt-get -o Debug::NoLocking=1 -q check"
    answers = {
        check_cmd: CommandResult(100, "", "E: Unmet dependencies.\n"),
        "apt-get -y -q -f install": CommandResult(100, "Reading lists\n", "E: broken beyond\n"),
    }
    fix = AptFixBroken(FixRunner(FakeExec(answers), layout=NOT_PID1))
    plan = fix.plan(None)
    assert "Unmet dependencies" in plan.summary
    [result] = fix.apply(plan)
    assert not result.ok
    assert result.returncode == 100
    assert "broken beyond" in result.stderr


def test_restart_unit_is_unavailable_without_systemd() -> None:
    with pytest.raises(Unavailable, match="not PID 1"):
        RestartUnit(FixRunner(FakeExec({}), layout=NOT_PID1)).plan(None)


def test_under_systemd_commands_run_in_a_transient_unit(tmp_path: Path) -> None:
    # PID 1 here is not systemd: a directory stands for /run/systemd/system.
    (tmp_path / "systemd").mkdir()
    (tmp_path / "bus").touch()
    layout = HostLayout(systemd_runtime=str(tmp_path / "systemd"), system_bus=str(tmp_path / "bus"))
    fake = FakeExec({})
    runner = FixRunner(fake, layout=layout)
    runner.run(["dpkg", "--configure", "-a"], "dpkg_configure")
    assert fake.calls[0][:5] == ["systemd-run", "--wait", "--collect", "--pipe", "--quiet"]
    assert fake.calls[0][-3:] == ["dpkg", "--configure", "-a"]


def test_a_missing_system_bus_is_unavailable_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    layout = HostLayout(systemd_runtime=str(tmp_path / "systemd"), system_bus=str(tmp_path / "no"))
    with pytest.raises(Unavailable, match="system bus"):
        FixRunner(FakeExec({}), layout=layout).run(["true"], "x")


@pytest.fixture
def cortex_tree(tmp_path: Path) -> Path:
    etc = tmp_path / "etc/cortex"
    (etc / "plugins/ok").mkdir(parents=True)
    (etc / "daemon.conf").write_text("x: 1\n")
    (etc / "plugins/ok/plugin.yaml").write_text("name: ok\n")
    os.chmod(etc / "daemon.conf", 0o666)
    os.chmod(etc / "plugins/ok", 0o777)
    (etc / "ok.conf").write_text("")
    os.chmod(etc / "ok.conf", 0o640)
    (etc / "link").symlink_to("/etc/passwd")
    return etc


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_world_write_is_removed_from_real_files(cortex_tree: Path) -> None:
    roots, owner = [str(cortex_tree)], os.geteuid()
    check = WorldWritable(roots, owner)
    [finding] = check.collect()
    assert finding.status is Status.FAIL
    assert set(finding.details["paths"]) == {
        str(cortex_tree / "daemon.conf"),
        str(cortex_tree / "plugins/ok"),
    }
    fix = RemoveWorldWrite(FixRunner(layout=NOT_PID1), roots, owner)
    plan = fix.plan(None)
    assert {s.action for s in plan.steps} == {"chmod 0664", "chmod 0775"}
    assert all(r.ok for r in fix.apply(plan))
    assert _mode(cortex_tree / "daemon.conf") == 0o664
    assert _mode(cortex_tree / "plugins/ok") == 0o775
    assert _mode(cortex_tree / "ok.conf") == 0o640
    assert check.collect()[0].status is Status.PASS
    assert os.path.islink(cortex_tree / "link")


@pytest.mark.root
def test_ownership_and_group_write_are_reset(cortex_tree: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(cortex_tree / "ok.conf", 65534, -1)
    roots = [str(cortex_tree)]
    check = CortexPermissions(roots, 0)
    [finding] = check.collect()
    assert finding.status is Status.WARN
    assert str(cortex_tree / "ok.conf") in finding.details["paths"]
    fix = ResetCortexPermissions(FixRunner(layout=NOT_PID1), roots, 0)
    assert all(r.ok for r in fix.apply(fix.plan(None)))
    assert os.lstat(cortex_tree / "ok.conf").st_uid == 0
    assert _mode(cortex_tree / "daemon.conf") == 0o644
    assert check.collect()[0].status is Status.PASS
    assert WorldWritable(roots, 0).collect()[0].status is Status.PASS


def test_the_journal_is_vacuumed_only_when_its_filesystem_is_full(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    fake = FakeExec({})
    failing: list[str] = []
    fix = VacuumJournal(
        FixRunner(fake, layout=NOT_PID1), "200M", (str(journal),), failing_mounts=lambda: failing
    )
    assert fix.plan(None).steps == ()
    assert "no full filesystem" in fix.plan(None).summary
    failing.append(str(tmp_path))  # disk_space fails on the journal's filesystem
    plan = fix.plan(None)
    assert [s.argv for s in plan.steps] == [("journalctl", "--vacuum-size=200M")]
    [result] = fix.apply(plan)
    assert result.ok
    assert fake.calls == [["journalctl", "--vacuum-size=200M"]]
    other = VacuumJournal(FixRunner(fake, layout=NOT_PID1), "200M", (str(journal),))
    assert other.plan("/proc").steps == ()  # the journal is not on /proc


@pytest.mark.root
def test_a_users_home_and_cortex_dirs_go_back_to_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    home = tmp_path / "alice"
    state = home / ".local/state/cortex"
    state.mkdir(parents=True)
    (state / "history.db").write_text("")
    os.chmod(state / "history.db", 0o666)
    os.chown(home, 65534, 65534)
    # A real account would mean editing this machine's /etc/passwd: the lookup is faked.
    entry = pwd.struct_passwd(("alice", "x", 65534, 65534, "", str(home), "/bin/sh"))
    monkeypatch.setattr(pwd, "getpwnam", lambda name: entry)
    fix = UserPermissions(FixRunner(layout=NOT_PID1))
    plan = fix.plan("alice")
    changed = {(s.action, s.path) for s in plan.steps}
    assert ("chown 65534", str(state / "history.db")) in changed
    assert ("chmod 0644", str(state / "history.db")) in changed
    assert not any(s.path == str(home) for s in plan.steps)  # the home is already alice's
    assert all(r.ok for r in fix.apply(plan))
    assert os.lstat(state / "history.db").st_uid == 65534
    assert _mode(state / "history.db") == 0o644
    assert fix.plan("alice").steps == ()


@pytest.mark.root
def test_root_owned_cortex_files_are_fine_for_an_unprivileged_daemon(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs files owned by root")
    (tmp_path / "daemon.conf").write_text("")
    os.chmod(tmp_path / "daemon.conf", 0o644)
    os.chmod(tmp_path, 0o755)
    # A daemon running as uid 1000 (make run) finds /etc/cortex owned by root.
    assert CortexPermissions([str(tmp_path)], 1000).collect()[0].status is Status.PASS
    os.chown(tmp_path / "daemon.conf", 2000, -1)
    assert CortexPermissions([str(tmp_path)], 1000).collect()[0].status is Status.WARN
