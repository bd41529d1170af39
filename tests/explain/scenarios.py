"""The explain scenarios: real conditions made in private namespaces, and what must be said.

Each scenario starts a daemon as the first process of fresh PID and mount
namespaces (tests/explain/nsinit.py), with only the scenario's check enabled.
The condition is then made for real inside those namespaces: a tmpfs filled
by a log file, a deleted file held open, a memory hog, zombies under a named
parent, a held dpkg lock on a tmpfs over /var/lib/dpkg… Nothing is mounted,
locked or filled on the host, and the host's own processes are not visible
to the facts. The check runs (`checks.run`), its alert is explained by the
8-character prefix `alerts list` shows, and the expectation says which
causes the facts must point to, in which order, which fact is the top
cause's evidence and which fixes it offers.

bench/explain.py runs the same scenarios with the model loaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from tests.daemon import DaemonProcess, merge, running_daemon, short_tmpdir

HERE = Path(__file__).resolve().parent
NSINIT = HERE / "nsinit.py"
ACTORS = HERE / "actors.py"
MIB = 1024 * 1024
COMMAND_TIMEOUT = 60.0
CALL_TIMEOUT = 60.0
# Every check the daemon has: a scenario enables its own and turns off the rest.
ALL_CHECKS = (
    "cpu_usage", "cpu_load", "memory", "swap_usage", "disk_space", "file_descriptors",
    "zombie_processes", "process_count", "systemd_failed", "apt_status", "apt_updates",
    "security_updates", "cve_scan", "dependency_conflicts", "time_sync", "dns_resolution",
    "network_connectivity", "reboot_required", "apt_locks", "cortex_world_writable",
    "cortex_permissions",
)  # fmt: skip


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@dataclass
class World:
    """A scenario's daemon, the namespaces it runs in, and the scenario's own directory."""

    daemon: DaemonProcess
    pid1: int  # the namespaces' first process, as the host sees it
    base: Path
    actors: list[subprocess.Popen[str]] = field(default_factory=list)

    def enter(self) -> list[str]:
        return ["nsenter", f"--target={self.pid1}", "--mount", "--pid", "--"]

    def run(self, *cmd: str) -> None:
        """Run `cmd` inside the scenario's namespaces; it must succeed."""
        done = subprocess.run(
            [*self.enter(), *cmd], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
        assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"

    def sh(self, script: str) -> None:
        self.run("sh", "-c", script)

    def tmpfs(self, name: str, options: str) -> str:
        """A tmpfs mounted at BASE/NAME, seen only inside the namespaces."""
        where = self.base / name
        where.mkdir()
        self.run("mount", "-t", "tmpfs", "-o", f"{options},mode=0755", "tmpfs", str(where))
        return str(where)

    def actor(self, role: str, *args: str) -> int:
        """Start an actor in the namespaces; returns its pid there once it is ready."""
        proc = subprocess.Popen(
            [*self.enter(), sys.executable, str(ACTORS), role, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.actors.append(proc)
        stdout: IO[str] | None = proc.stdout
        assert stdout is not None
        line = stdout.readline()
        assert line.startswith("ready"), f"{role} did not start: {line}{stdout.read()}"
        return int(line.split()[1])

    def explain(self, check: str, subject: dict[str, str], **params: Any) -> dict[str, Any]:
        """Run `check`, find its alert about `subject`, explain it by its 8-character prefix."""
        self.daemon.call("checks.run", {"ids": [check]}, timeout=CALL_TIMEOUT)
        found = self.daemon.call("alerts.list", {"state": "active"})["alerts"]
        mine = [
            a
            for a in found
            if a["source"] == check and all(a["labels"].get(k) == v for k, v in subject.items())
        ]
        assert len(mine) == 1, f"expected one {check} alert about {subject}; got {found}"
        request = {"alert_id": mine[0]["id"][:8], **params}
        result: dict[str, Any] = self.daemon.call(
            "inference.explain", request, timeout=CALL_TIMEOUT
        )
        return result


Setup = Callable[[World], dict[str, str]]


@dataclass(frozen=True)
class Scenario:
    """A condition, the check that sees it, and what the explanation must say.

    `causes`: the causes the facts point to, in rank order. With `exact`
    false only the first is asserted, because host-wide figures the scenario
    cannot fix (said in `why_inexact`) may point to more. `evidence` is the
    subject of the top cause's first evidence, formatted with `setup`'s
    values; `fixes` the (fix_id, safety) pairs the top cause offers.
    """

    name: str
    check: str
    setup: Setup
    entry: str
    causes: tuple[str, ...]
    evidence: str
    fixes: tuple[tuple[str, str], ...] = ()
    subject: tuple[str, ...] = ()  # labels of the alert to explain, from setup's values
    settings: dict[str, Any] = field(default_factory=dict)
    config: Callable[[Path], dict[str, Any]] = lambda base: {}
    net: bool = False
    exact: bool = True
    why_inexact: str = ""


def scenario_config(scenario: Scenario, base: Path) -> dict[str, Any]:
    checks: dict[str, Any] = {name: {"enabled": False} for name in ALL_CHECKS}
    checks[scenario.check] = {"interval_seconds": 3600, **scenario.settings}
    own = {
        "checks": checks,
        "logs": {"watch": False},
        "repair": {
            "config_dir": str(base / "etc-cortex"),
            "runtime_dir": str(base / "run-cortex"),
        },
    }
    return merge(own, scenario.config(base))


@contextlib.contextmanager
def world(scenario: Scenario, extra: dict[str, Any] | None = None) -> Iterator[World]:
    """The scenario's daemon in its own namespaces (needs root), stopped afterwards."""
    base = Path(short_tmpdir("cxexp"))
    os.chmod(base, 0o755)
    (base / "etc-cortex").mkdir(mode=0o755)
    config = merge(scenario_config(scenario, base), extra or {})
    command = [sys.executable, str(NSINIT), *(["--net"] if scenario.net else []), "--"]
    command += [sys.executable, "-m", "cortexd"]
    try:
        with running_daemon(config, command=command) as daemon:
            (pid1,) = children(daemon.proc.pid)
            w = World(daemon, pid1, base)
            try:
                yield w
            finally:
                for proc in w.actors:
                    # nsenter waits for the actor it started: end the actor, then nsenter.
                    for pid in children(proc.pid):
                        os.kill(pid, signal.SIGKILL)
                    proc.kill()
                    proc.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- the conditions ---------------------------------------------------------------------


def _large_log(w: World) -> dict[str, str]:
    mp = w.tmpfs("data", "size=16m")
    w.sh(
        f"mkdir -p {mp}/var/log/app {mp}/etc && head -c {14 * MIB} /dev/zero > "
        f"{mp}/var/log/app/huge.log && echo ok > {mp}/etc/app.conf"
    )
    return {"mountpoint": mp}


def _deleted_open(w: World) -> dict[str, str]:
    mp = w.tmpfs("data", "size=16m")
    pid = w.actor("log-writer", f"{mp}/app.log", "14")
    return {"mountpoint": mp, "pid": str(pid)}


def _small_files(w: World) -> dict[str, str]:
    mp = w.tmpfs("data", "size=64m,nr_inodes=2000")
    w.sh(f"mkdir -p {mp}/cache/sessions && cd {mp}/cache/sessions && seq 1 1900 | xargs touch")
    return {"mountpoint": mp}


def _dpkg_tmpfs(w: World) -> None:
    """A private, empty dpkg database and apt state: never the host's locks or lists."""
    for where in ("/var/lib/dpkg", "/var/lib/apt/lists", "/var/cache/apt/archives"):
        w.run("mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", where)
    w.sh(
        ": > /var/lib/dpkg/status && mkdir -p /var/lib/dpkg/updates /var/lib/dpkg/info"
        " && touch /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock"
    )


def _held_lock(w: World) -> dict[str, str]:
    _dpkg_tmpfs(w)
    pid = w.actor("pkg-installer", "/var/lib/dpkg/lock-frontend")
    return {"pid": str(pid)}


def _interrupted(w: World) -> dict[str, str]:
    _dpkg_tmpfs(w)
    # What dpkg leaves when it is killed between unpacking and configuring.
    w.sh(": > /var/lib/dpkg/updates/0001")
    return {}


def _stale_lock(w: World) -> dict[str, str]:
    lock = w.base / "root/var/lib/dpkg/lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("31337\n")  # a pid some script wrote; no process holds the lock
    return {"lock": str(lock)}


def _world_writable(w: World) -> dict[str, str]:
    spool = Path(w.daemon.state_dir) / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    return {"path": str(spool)}


def _foreign_owner(w: World) -> dict[str, str]:
    path = Path(w.daemon.state_dir) / "imported.conf"
    path.write_text("copied by hand\n")
    os.chmod(path, 0o644)
    os.chown(path, 65534, 65534)
    return {"path": str(path)}


def _actor(role: str, *args: str) -> Setup:
    def setup(w: World) -> dict[str, str]:
        return {"pid": str(w.actor(role, *args))}

    return setup


def _nothing(w: World) -> dict[str, str]:
    return {}


# Levels low enough that the host's own figures cross them: the condition the
# explanation must find is the scenario's, not the level.
ALWAYS = {"warning": 1e-30, "warning_clear": 1e-31, "critical": 1e30, "critical_clear": 1e29}
HOST_WIDE = "{} come from the host's /proc, shared with everything else running"

SCENARIOS = (
    Scenario(
        "disk_filled_by_one_log",
        "disk_space",
        _large_log,
        entry="disk_space",
        causes=("large_file", "one_directory"),
        evidence="{mountpoint}/var/log/app/huge.log",
        subject=("mountpoint",),
        config=lambda base: {"checks": {"disk_space": {"include": [str(base / "data")]}}},
    ),
    Scenario(
        "disk_held_by_deleted_file",
        "disk_space",
        _deleted_open,
        entry="disk_space",
        causes=("deleted_open",),
        evidence="pid {pid} (log-writer)",
        subject=("mountpoint",),
        config=lambda base: {"checks": {"disk_space": {"include": [str(base / "data")]}}},
    ),
    Scenario(
        "inodes_used_by_small_files",
        "disk_space",
        _small_files,
        entry="disk_space",
        causes=("many_small_files",),
        evidence="{mountpoint}",
        subject=("mountpoint",),
        config=lambda base: {"checks": {"disk_space": {"include": [str(base / "data")]}}},
    ),
    Scenario(
        "memory_hog",
        "memory",
        # Larger than the daemon itself with the model loaded (bench/explain.py loads it).
        _actor("mem-hog", "512"),
        entry="memory",
        causes=("one_process",),
        evidence="pid {pid} (mem-hog)",
        settings={**ALWAYS, "samples": 1},
        exact=False,
        why_inexact=HOST_WIDE.format("shared memory and slab shares"),
    ),
    Scenario(
        "cpu_burner",
        "cpu_load",
        _actor("cpu-burner"),
        entry="cpu_load",
        causes=("one_process",),
        evidence="pid {pid} (cpu-burner)",
        settings={**ALWAYS, "samples": 1},
        exact=False,
        why_inexact=HOST_WIDE.format("iowait and busy time"),
    ),
    Scenario(
        "zombies_under_named_parent",
        "zombie_processes",
        _actor("zombie-maker", "6"),
        entry="zombie_processes",
        causes=("parent_not_reaping",),
        evidence="pid {pid} (zombie-maker)",
        settings={"warning": 3, "warning_clear": 1, "critical": 50, "samples": 1},
    ),
    Scenario(
        "dpkg_lock_held",
        "apt_status",
        _held_lock,
        entry="apt_status",
        causes=("package_run_in_progress",),
        evidence="/var/lib/dpkg/lock-frontend",
    ),
    Scenario(
        "dpkg_interrupted",
        "apt_status",
        _interrupted,
        entry="apt_status",
        causes=("interrupted_dpkg",),
        evidence="/var/lib/dpkg/updates",
        fixes=(("dpkg_configure", "confirm"),),
    ),
    Scenario(
        "stale_apt_lock_file",
        "apt_locks",
        _stale_lock,
        entry="apt_locks",
        causes=("stale_lock_file",),
        evidence="{lock}",
        fixes=(("clear_apt_locks", "safe"),),
        config=lambda base: {"repair": {"root": str(base / "root")}},
    ),
    Scenario(
        "world_writable_state_dir",
        "cortex_world_writable",
        _world_writable,
        entry="cortex_world_writable",
        causes=("opened_by_hand",),
        evidence="{path}",
        fixes=(("remove_world_write", "safe"),),
    ),
    Scenario(
        "foreign_owner_in_state_dir",
        "cortex_permissions",
        _foreign_owner,
        entry="cortex_permissions",
        causes=("foreign_owner",),
        evidence="{path}",
        fixes=(("reset_cortex_permissions", "confirm"),),
    ),
    Scenario(
        "one_process_opens_too_many_files",
        "file_descriptors",
        _actor("fd-leaker", "3000"),
        entry="file_descriptors",
        causes=("fd_leak",),
        evidence="pid {pid} (fd-leaker)",
        settings={**ALWAYS, "samples": 1},
        exact=False,
        why_inexact=HOST_WIDE.format("fs.file-max and the open-file count"),
    ),
    Scenario(
        "no_default_route",
        "network_connectivity",
        _nothing,
        entry="network_connectivity",
        causes=("no_default_route", "interfaces_down"),
        evidence="default route",
        # TEST-NET-1 (RFC 5737): never routed, and there is no route at all here.
        settings={"targets": ["192.0.2.10:443"]},
        net=True,
    ),
)


def judge(scenario: Scenario, values: dict[str, str], result: dict[str, Any]) -> list[str]:
    """How an explanation departs from the scenario's expectation (empty: right)."""
    problems = []
    if result["entry"] != scenario.entry:
        problems.append(f"entry {result['entry']!r}, expected {scenario.entry!r}")
    pointed = [c["id"] for c in result["causes"] if c["pointed_to"]]
    wanted = list(scenario.causes)
    if (pointed if scenario.exact else pointed[:1]) != (wanted if scenario.exact else wanted[:1]):
        problems.append(f"causes pointed to {pointed}, expected {wanted}")
    top = result["causes"][0]
    evidence = [e["subject"] for e in top["evidence"]]
    if evidence[:1] != [scenario.evidence.format(**values)]:
        problems.append(f"top evidence {evidence}, expected {scenario.evidence.format(**values)}")
    offered = [(f["fix_id"], f["safety"]) for f in result["fixes"] if f["fix_id"] in top["fixes"]]
    if offered != list(scenario.fixes):
        problems.append(f"fixes for the top cause {offered}, expected {list(scenario.fixes)}")
    return problems


# The clock cannot be unsynchronised for real without disturbing the host: the
# probe gives adjtimex's answer and keeps the rest real (see clock_probe.py).
CLOCK = Scenario(
    "clock_not_synchronised",
    "time_sync",
    _nothing,
    entry="time_sync",
    causes=("no_ntp_client",),
    evidence="NTP client",
)


def clock_answer() -> dict[str, Any]:
    """The explanation clock_probe.py builds inside fresh namespaces."""
    done = subprocess.run(
        [sys.executable, str(NSINIT), "--", sys.executable, "-m", "tests.explain.clock_probe"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        cwd=HERE.parent.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = orjson.loads(done.stdout)
    return answer
