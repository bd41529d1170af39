"""Ownership and modes of the Cortex directories, and world-writable files in them.

The Cortex locations hold the config (`/etc/cortex`, with plugins the daemon
executes), the state (`/var/lib/cortex`) and the runtime dir. A file there
that anyone may write is a way to run code as the daemon, so it is a FAIL
with a safe fix (drop the world-write bit). Files owned by another user, or
group-writable, are a WARN; resetting them (owner back to the daemon's user,
group-write dropped) is a `confirm` fix. The group itself is left alone: the
socket's group is how non-root users reach the daemon. Symlinks are never
followed.
"""

from __future__ import annotations

import functools
import os
import pwd
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cortexd.monitor.check import Check, Finding, Status
from cortexd.protocol import InvalidParams, NotFound
from cortexd.repair.model import Fix, Plan, Step, StepResult
from cortexd.repair.runner import FixRunner, file_op

MAX_ENTRIES = 20_000
MAX_LISTED = 50


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    mode: int
    uid: int
    world_writable: bool
    group_writable: bool
    foreign_owner: bool


def walk(roots: Sequence[str]) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under `roots` (roots included), not following symlinks; bounded."""
    count = 0
    for root in roots:
        stack = [root]
        while stack:
            path = stack.pop()
            try:
                st = os.lstat(path)
            except OSError:
                continue
            count += 1
            if count > MAX_ENTRIES:
                return
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                try:
                    names = os.listdir(path)
                except OSError:
                    continue
                stack.extend(os.path.join(path, n) for n in sorted(names, reverse=True))


def problems(roots: Sequence[str], owner: int) -> list[Problem]:
    """Entries under `roots` that are world-writable, group-writable or owned by
    someone other than `owner` (the daemon's user) or root."""
    found = []
    for path, st in walk(roots):
        if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            continue
        # A sticky world-writable dir (like /tmp) is a design, not a mistake.
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        world = bool(st.st_mode & stat.S_IWOTH) and not sticky_dir
        group = bool(st.st_mode & stat.S_IWGRP)
        # Root's files are fine for any daemon: /etc/cortex stays root's under `make run`.
        foreign = st.st_uid not in (owner, 0)
        if world or group or foreign:
            found.append(Problem(path, stat.S_IMODE(st.st_mode), st.st_uid, world, group, foreign))
    return found


def _existing(roots: Sequence[str]) -> list[str]:
    return [r for r in dict.fromkeys(roots) if r and os.path.lexists(r)]


class _TreeCheck(Check):
    """A check over the files under the Cortex roots: which of them have `_bad`."""

    problem = ""  # how a found path is described, e.g. "world-writable"
    fine = ""  # the PASS message
    found_status = Status.FAIL

    def __init__(self, roots: Sequence[str], owner: int) -> None:
        self.roots = tuple(roots)
        self.owner = owner

    def _bad(self, found: Problem) -> bool:
        raise NotImplementedError

    def collect(self) -> list[Finding]:
        roots = _existing(self.roots)
        if not roots:
            return [Finding("no Cortex directories here", status=Status.SKIP)]
        bad = [p.path for p in problems(roots, self.owner) if self._bad(p)]
        if bad:
            return [
                Finding(
                    f"{len(bad)} {self.problem}: {', '.join(bad[:5])}",
                    status=self.found_status,
                    details={"paths": bad[:MAX_LISTED], "roots": roots},
                )
            ]
        return [Finding(self.fine, status=Status.PASS, details={"paths": [], "roots": roots})]


class WorldWritable(_TreeCheck):
    id = "cortex_world_writable"
    name = "World-writable Cortex files"
    category = "security"
    alert_category = "security"
    description = "files anyone can write under the Cortex config, state and runtime dirs"
    interval = 600.0
    fix_id = "remove_world_write"
    problem = "world-writable"
    fine = "nothing world-writable"

    def _bad(self, found: Problem) -> bool:
        return found.world_writable


class CortexPermissions(_TreeCheck):
    id = "cortex_permissions"
    name = "Cortex ownership"
    category = "security"
    alert_category = "security"
    description = "Cortex files owned by another user or writable by their group"
    interval = 600.0
    fix_id = "reset_cortex_permissions"
    problem = "with a foreign owner or group-write"
    fine = "owners and modes ok"
    found_status = Status.WARN

    def _bad(self, found: Problem) -> bool:
        return found.foreign_owner or found.group_writable


def _chmod_step(path: str, mode: int) -> Step:
    return Step("file", f"chmod {mode:04o}", path=path)


class _PathFix(Fix):
    """A fix over files found under some roots; each step a chmod or chown."""

    def __init__(self, runner: FixRunner, roots: Sequence[str], owner: int) -> None:
        self.runner = runner
        self.roots = tuple(roots)
        self.owner = owner

    def apply(self, plan: Plan) -> list[StepResult]:
        results = []
        for step in plan.steps:
            path = step.path
            if step.action.startswith("chmod "):
                mode = int(step.action.split()[1], 8)
                argv = ["chmod", f"{mode:04o}", "--", path]
                results.append(
                    file_op(self.runner, step, self.id, argv, functools.partial(_chmod, path, mode))
                )
            else:
                uid = int(step.action.split()[1])
                argv = ["chown", "-h", str(uid), "--", path]
                results.append(
                    file_op(
                        self.runner,
                        step,
                        self.id,
                        argv,
                        functools.partial(os.lchown, path, uid, -1),
                    )
                )
        return results


def _chmod(path: str, mode: int) -> None:
    # O_NOFOLLOW: the entry was not a symlink when planned; refuse if it became one.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


class RemoveWorldWrite(_PathFix):
    id = "remove_world_write"
    description = "remove the world-write bit from files in the Cortex directories"
    safety = "safe"
    checks = ("cortex_world_writable",)

    def plan(self, target: str | None) -> Plan:
        roots = _existing(self.roots)
        bad = [p for p in problems(roots, self.owner) if p.world_writable]
        steps = tuple(_chmod_step(p.path, p.mode & ~stat.S_IWOTH) for p in bad)
        summary = f"remove world-write from {len(bad)} file(s)" if bad else "nothing world-writable"
        return Plan(self.id, None, summary, steps)


class ResetCortexPermissions(_PathFix):
    id = "reset_cortex_permissions"
    description = "give Cortex files back to the daemon's user and drop group/world write"
    safety = "confirm"
    checks = ("cortex_permissions", "cortex_world_writable")

    def plan(self, target: str | None) -> Plan:
        roots = _existing(self.roots)
        steps: list[Step] = []
        for p in problems(roots, self.owner):
            if p.foreign_owner:
                steps.append(Step("file", f"chown {self.owner}", path=p.path))
            if p.world_writable or p.group_writable:
                steps.append(_chmod_step(p.path, p.mode & ~(stat.S_IWOTH | stat.S_IWGRP)))
        summary = (
            f"{len(steps)} change(s) under {', '.join(roots)}" if steps else "nothing to reset"
        )
        return Plan(self.id, None, summary, tuple(steps))


class UserPermissions(_PathFix):
    """A user's home and Cortex dirs back to that user, without group/world write."""

    id = "user_permissions"
    description = "give a user's home and Cortex dirs back to them; drop group/world write"
    safety = "confirm"
    targeted = True

    def __init__(self, runner: FixRunner) -> None:
        super().__init__(runner, (), 0)

    def plan(self, target: str | None) -> Plan:
        if not target:
            raise InvalidParams("target", "name the user whose files to repair")
        try:
            user = pwd.getpwnam(target)
        except KeyError:
            raise NotFound(f"no user {target!r}", user=target) from None
        home = user.pw_dir
        steps: list[Step] = []
        top = [home]
        cortex = [os.path.join(home, ".config/cortex"), os.path.join(home, ".local/state/cortex")]
        # The home itself is only checked at the top; Cortex dirs recursively.
        for path, st in [*((p, os.lstat(p)) for p in _existing(top)), *walk(_existing(cortex))]:
            if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue
            if st.st_uid != user.pw_uid:
                steps.append(Step("file", f"chown {user.pw_uid}", path=path))
            if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
                mode = stat.S_IMODE(st.st_mode) & ~(stat.S_IWOTH | stat.S_IWGRP)
                steps.append(_chmod_step(path, mode))
        summary = f"{len(steps)} change(s) for {target}" if steps else f"{target}'s files are fine"
        return Plan(self.id, target, summary, tuple(steps))
