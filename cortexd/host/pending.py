"""What apt would upgrade: one simulation that every answer about pending updates reads.

The `apt_updates` and `security_updates` checks, the `health` snapshot and
`updates.check` all read the same `PendingUpdates`, so they cannot tell an
operator two different things. A scan is `apt-get -s dist-upgrade` (with
`Debug::NoLocking`, so it never waits for an administrator's apt run) and
costs a second of CPU or more; it is kept until it no longer describes the
system, then run again when next asked:

- dpkg's status file changed (packages were installed or removed, by the
  daemon or anyone else), or the package lists directory did (`apt-get
  update` fetched new lists): both are compared by mtime on every read that
  may run a scan, and by the monitor's periodic `look()`;
- an apply of the daemon's own finished (`invalidate()`);
- the caller wants something younger (`max_age`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cortexd.host.commands import CommandFailed, Runner, first_line, have, is_real, run_command
from cortexd.host.files import list_names

log = logging.getLogger(__name__)

DPKG_DIR = "/var/lib/dpkg"
DPKG_STATUS = "/var/lib/dpkg/status"
APT_LISTS = "/var/lib/apt/lists"
NO_LOCK = ("-o", "Debug::NoLocking=1")
SIMULATION_TIMEOUT = 300.0
_LIST_SUFFIXES = ("Packages", "Packages.lz4", "Packages.gz", "Packages.xz", "InRelease", "Release")
_INST = re.compile(
    r"^Inst (?P<name>\S+) (?:\[(?P<old>[^\]]*)\] )?\((?P<new>\S+) (?P<origin>[^\[]*)"
)

# What a scan saw of the files it depends on: (dpkg status, lists directory) mtimes.
Stamp = tuple[int | None, int | None]


@dataclass(frozen=True, slots=True)
class Upgrade:
    package: str
    current: str | None
    candidate: str
    origin: str

    @property
    def security(self) -> bool:
        return "security" in self.origin.lower()


def parse_simulation(text: str) -> list[Upgrade]:
    """Upgrades from `apt-get -s dist-upgrade` output (its `Inst` lines)."""
    out = []
    for line in text.splitlines():
        found = _INST.match(line)
        if found:
            out.append(
                Upgrade(
                    found.group("name"),
                    found.group("old"),
                    found.group("new"),
                    found.group("origin").strip(),
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class Scan:
    """One answer to "what is pending": the upgrades, or why apt could not tell."""

    upgrades: tuple[Upgrade, ...]
    lists_age: float | None  # how old the package lists were, in seconds, at `checked_at`
    problem: str | None  # e.g. lists never downloaded; then `upgrades` is empty
    checked_at: float  # wall time
    stamp: Stamp = (None, None)

    @property
    def security(self) -> list[Upgrade]:
        return [u for u in self.upgrades if u.security]


def simulate(
    runner: Runner,
    lists_dir: str = APT_LISTS,
    apt_command: Sequence[str] = ("apt-get",),
    now: float | None = None,
) -> Scan:
    """Run one upgrade simulation (blocking).

    Raises:
        CommandFailed: apt failed (the check reports it as ERROR).
    """
    checked_at = time.time() if now is None else now
    if is_real(runner) and tuple(apt_command) == ("apt-get",) and _no_apt():
        return Scan((), None, "no dpkg/apt on this host", checked_at)
    lists = [n for n in list_names(lists_dir) if n.endswith(_LIST_SUFFIXES)]
    if not lists:
        never = "package lists were never downloaded (run apt-get update)"
        return Scan((), None, never, checked_at)
    newest = max(os.stat(os.path.join(lists_dir, n)).st_mtime for n in lists)
    argv = [*apt_command, *NO_LOCK, "-s", "-q", "dist-upgrade"]
    done = runner(argv, SIMULATION_TIMEOUT)
    if done.returncode != 0:
        raise CommandFailed(
            f"apt-get -s dist-upgrade failed: {first_line(done.stderr)}",
            program="apt-get",
            returncode=done.returncode,
        )
    return Scan(tuple(parse_simulation(done.stdout)), time.time() - newest, None, checked_at)


class PendingUpdates:
    """The shared, self-invalidating upgrade simulation (thread-safe).

    `apt_command` replaces `apt-get` (tests and packagers inject their own);
    `clock` gives the wall time scans are stamped with. `latest`,
    `invalid_since` and `invalidate()` never block, so the event loop may use
    them; `scan()` and `look()` touch the disk and belong on a thread.
    """

    def __init__(
        self,
        runner: Runner = run_command,
        *,
        apt_command: Sequence[str] = ("apt-get",),
        lists_dir: str = APT_LISTS,
        dpkg_status: str = DPKG_STATUS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runner = runner
        self.apt_command = tuple(apt_command)
        self.lists_dir = lists_dir
        self.dpkg_status = dpkg_status
        self.clock = clock
        # One simulation at a time; the state lock is only ever held briefly.
        self._scan_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._latest: Scan | None = None
        self._invalid_since: float | None = None
        self._generation = 0
        self._failure: str | None = None

    @property
    def latest(self) -> Scan | None:
        """The last scan while it still holds; None before the first and after invalidation."""
        return self._latest

    @property
    def failure(self) -> str | None:
        """Why the last scan failed (apt's error), until one succeeds."""
        return self._failure

    @property
    def invalid_since(self) -> float | None:
        """When the last scan stopped holding, until a new one is made."""
        return self._invalid_since

    def configure(self, *, apt_command: Sequence[str], lists_dir: str, dpkg_status: str) -> None:
        """Take reloaded settings; a scan made with other ones no longer holds."""
        wanted = (tuple(apt_command), lists_dir, dpkg_status)
        with self._state_lock:
            if wanted == (self.apt_command, self.lists_dir, self.dpkg_status):
                return
            self.apt_command, self.lists_dir, self.dpkg_status = wanted
            self._drop("the apt settings changed")

    def invalidate(self, reason: str) -> None:
        """Forget the last scan (e.g. after packages were upgraded); a running one is not kept."""
        with self._state_lock:
            self._drop(reason)

    def look(self) -> Stamp:
        """Read the package files' stamp (blocking); a changed one forgets the last scan."""
        stamp = self._stamp()
        last = self._latest
        if last is not None and stamp != last.stamp:
            with self._state_lock:
                if self._latest is last:
                    self._drop("dpkg's status or the package lists changed")
        return stamp

    def scan(self, max_age: float) -> Scan:
        """The last scan if it still holds and is younger than `max_age` s, else a new one.

        Blocking (runs apt); waits for a scan another thread is running and
        then answers from it when it is young enough.

        Raises:
            CommandFailed: apt failed; nothing is cached.
        """
        with self._scan_lock:
            self.look()
            last = self._latest
            if last is not None and self.clock() - last.checked_at < max_age:
                return last
            with self._state_lock:
                generation = self._generation
                settings = (self.runner, self.lists_dir, self.apt_command)
            # Stamped with what was seen before apt ran: a change while it
            # runs makes this scan stale at the next look, never the reverse.
            stamp = self._stamp()
            try:
                found = simulate(*settings, self.clock())
            except CommandFailed as exc:
                self._failure = str(exc)
                raise
            self._failure = None
            found = Scan(found.upgrades, found.lists_age, found.problem, found.checked_at, stamp)
            with self._state_lock:
                # Invalidated while apt ran (an apply finished): answer, but keep nothing.
                if generation == self._generation:
                    self._latest = found
                    self._invalid_since = None
            return found

    def _drop(self, reason: str) -> None:
        self._generation += 1
        if self._latest is not None:
            log.info("pending updates will be checked again: %s", reason)
            self._latest = None
            self._invalid_since = self.clock()

    def _stamp(self) -> Stamp:
        return _mtime(self.dpkg_status), _mtime(self.lists_dir)


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _no_apt() -> bool:
    return not os.path.isdir(DPKG_DIR) or not have("dpkg") or not have("apt-get")
