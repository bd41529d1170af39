"""The update module: check, snapshot, apply and roll back (SPEC §12).

`check` answers from a cache younger than `updates.check_interval_hours`.
`apply` never runs twice at once (BUSY); it takes a snapshot with the .deb
files of the versions it replaces (`updates.backup_before_update`), then runs
apt — simulated (`-s`) unless confirmed — streaming apt's output, and raises
an INFO alert on success or an ERROR alert with the output's tail on failure.
A client that leaves cancels a simulated apply at once; a confirmed one, once
it has begun changing things, runs to its end (`status` shows it meanwhile).
`rollback` puts a snapshot's configuration back and reloads; it never
touches the live state database (what was written since is kept), shows how
the installed packages differ, and with `packages` reinstalls the saved
.debs (simulated unless confirmed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.text import TextReceiveStream

from cortexd.alerts import AlertManager, Severity
from cortexd.backup.service import config_files, write_atomically
from cortexd.config.schema import UpdatesConfig
from cortexd.monitor.checks.packages import Upgrade
from cortexd.protocol import Busy, Timeout, Unavailable
from cortexd.updates.apt import Apt, Installed
from cortexd.updates.snapshots import Snapshots, package_changes
from cortexd.updates.system import SystemUpdates

if TYPE_CHECKING:
    from cortexd.app import Daemon

log = logging.getLogger(__name__)

HOUR = 3600.0
TAIL_LINES = 30
MAX_LOG_LINES = 20_000
Progress = Callable[[dict[str, Any]], Awaitable[None]]


def _upgrade(u: Upgrade) -> dict[str, Any]:
    return {
        "package": u.package,
        "from": u.current,
        "to": u.candidate,
        "origin": u.origin,
        "security": u.security,
    }


class UpdateService:
    """A component owning the update cache, the snapshots and the apply lock."""

    name = "updates"

    def __init__(
        self, daemon: Daemon, alerts: AlertManager, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.daemon = daemon
        self.alerts = alerts
        self.clock = clock
        self.apt = Apt(self.config.apt_command, lists_dir=self.config.apt_lists_dir)
        self.snapshots = Snapshots(os.path.join(daemon.config.state_dir, "snapshots"), self.apt)
        self._cache: dict[str, Any] | None = None
        self._check_lock = anyio.Lock()
        self._apply_lock = anyio.Lock()
        self._applying: dict[str, Any] = {}
        self.applied = 0
        self.failed = 0
        self.system = SystemUpdates(
            state_dir=daemon.config.state_dir,
            config=lambda: self.config,
            apt=lambda: self.apt,
            snapshot=self.snapshot,
            snapshot_path=self.snapshots.path,
            run=self._run,
            lock=self._apply_lock,
            alerts=alerts,
            socket_path=lambda: daemon.socket_path,
            clock=clock,
        )
        # A release the channel delivered is the kept .deb when it is replaced.
        self.snapshots.kept_dirs = (self.system.releases_dir,)

    @property
    def config(self) -> UpdatesConfig:
        return self.daemon.config.updates

    def state(self) -> dict[str, Any]:
        cache = self._cache
        return {
            "state": "applying" if self._apply_lock.locked() else "running",
            "applying": self._apply_lock.locked(),
            "apply": self._applying if self._apply_lock.locked() else None,
            "applied": self.applied,
            "failed": self.failed,
            "last_check": cache["checked_at"] if cache else None,
            "pending": cache["counts"]["total"] if cache else None,
            "system_apply": self.system.state(),
        }

    async def start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._housekeeping)
        tg.start_soon(self.system.watch)

    def apply_config(self, config: Any) -> None:
        self.apt = Apt(config.updates.apt_command, lists_dir=config.updates.apt_lists_dir)
        self.snapshots.apt = self.apt

    async def stop(self) -> None:
        """Nothing to flush: snapshots are complete once written."""

    async def _housekeeping(self) -> None:
        while True:
            try:
                removed = await anyio.to_thread.run_sync(
                    self.snapshots.prune, self.config.rollback_retention_days
                )
                if removed:
                    log.info("removed %d old snapshots: %s", len(removed), ", ".join(removed))
            except Exception:  # isolation boundary: retried next round
                log.exception("snapshot pruning failed")
            await anyio.sleep(HOUR)

    # -- check -------------------------------------------------------------------

    async def check(self, *, force: bool = False) -> dict[str, Any]:
        """Pending upgrades (security ones apart), reboot flag, package list age."""
        async with self._check_lock:
            now = self.clock()
            cache = self._cache
            max_age = self.config.check_interval_hours * HOUR
            if cache is not None and not force and now - cache["checked_at"] < max_age:
                return {**cache, "cached": True}
            refreshed = None
            if force:
                done = await anyio.to_thread.run_sync(self.apt.refresh)
                refreshed = done.returncode == 0
                if not refreshed:
                    log.warning("apt-get update failed: %s", done.stderr.strip()[-300:])
            upgrades, age, problem = await anyio.to_thread.run_sync(self.apt.pending)
            reboot, reboot_packages = await anyio.to_thread.run_sync(self.apt.reboot_required)
            security = [_upgrade(u) for u in upgrades if u.security]
            result = {
                "checked_at": now,
                "cached": False,
                "available": problem is None,
                "problem": problem,
                "lists_refreshed_at": None if age is None else now - age,
                "lists_age_seconds": age,
                "lists_refresh_ok": refreshed,
                "upgrades": [_upgrade(u) for u in upgrades if not u.security],
                "security": security,
                "counts": {"total": len(upgrades), "security": len(security)},
                "reboot_required": reboot,
                "reboot_packages": reboot_packages,
            }
            self._cache = result
            return result

    # -- snapshots -----------------------------------------------------------------

    async def snapshot(self, reason: str, replacing: Sequence[Installed] = ()) -> dict[str, Any]:
        files = config_files(self.daemon)
        state_dir = self.daemon.config.state_dir
        meta = await anyio.to_thread.run_sync(
            lambda: self.snapshots.take(
                state_dir, files, reason=reason, replacing=replacing, now=self.clock()
            )
        )
        log.info("snapshot %s taken (%s)", meta["id"], reason)
        return meta

    async def rollback(
        self, snap_id: str | None, *, packages: bool, confirm: bool, progress: Progress
    ) -> dict[str, Any]:
        """Restore a snapshot's configuration; optionally reinstall its saved .debs."""
        meta = await anyio.to_thread.run_sync(self.snapshots.get, snap_id)
        written = await anyio.to_thread.run_sync(self._restore_config, meta)
        reload = await self.daemon.reload() if written else None
        then = await anyio.to_thread.run_sync(self.snapshots.packages, meta["id"])
        installed = await anyio.to_thread.run_sync(self.apt.installed)
        changes = package_changes(then, {i.package: i.version for i in installed})
        result: dict[str, Any] = {
            "snapshot": meta["id"],
            "config_restored": written,
            "restart_required": reload["restart_required"] if reload else [],
            "packages": changes,
        }
        if packages:
            debs_dir = os.path.join(self.snapshots.path(meta["id"]), "debs")
            debs = [os.path.join(debs_dir, d["file"]) for d in meta["debs"] if d.get("file")]
            if not debs:
                result["reinstall"] = {"simulated": not confirm, "returncode": None, "debs": []}
            else:
                argv = self.apt.reinstall_command(debs, simulate=not confirm)
                code, tail = await self._run(argv, progress)
                result["reinstall"] = {
                    "simulated": not confirm,
                    "returncode": code,
                    "debs": [os.path.basename(d) for d in debs],
                    "output_tail": tail,
                }
        return result

    def _restore_config(self, meta: dict[str, Any]) -> list[str]:
        # Only back to where the daemon reads its configuration now.
        allowed = {os.path.realpath(p) for p in config_files(self.daemon)}
        root = self.snapshots.path(meta["id"])
        written = []
        for entry in meta["config"]:
            origin = entry["origin"]
            if os.path.realpath(origin) not in allowed and not origin.startswith("/etc/cortex/"):
                log.warning("rollback: not writing %s (not a configuration path)", origin)
                continue
            write_atomically(os.path.join(root, entry["name"]), origin, entry.get("mode"))
            written.append(origin)
        return written

    # -- apply ------------------------------------------------------------------------

    async def apply(
        self,
        *,
        security_only: bool,
        names: Sequence[str],
        confirm: bool,
        progress: Progress,
    ) -> dict[str, Any]:
        """Upgrade pending packages (simulated unless `confirm`).

        Cancelled (the client left, the deadline passed) before a confirmed
        run takes its snapshot, or at any point of a simulated one, the apply
        stops at once and frees the lock; the package-list read it may be
        waiting for only reads, so it is left to finish alone. From the
        snapshot of a confirmed run on, cancellation waits for the end: dpkg
        must not be stopped half-way, and the outcome is still alerted.

        Raises:
            Busy: another apply is running.
            Unavailable: apt cannot tell what is pending.
        """
        if self._apply_lock.locked():
            raise Busy(self._busy_message())
        if self.system.in_progress():
            # Its installer runs apt outside the lock, in its own unit.
            raise Busy(self.system.busy_message())
        async with self._apply_lock:
            self._applying = {"since": self.clock(), "confirmed": confirm, "packages": None}
            upgrades, _age, problem = await anyio.to_thread.run_sync(
                self.apt.pending, abandon_on_cancel=True
            )
            if problem:
                raise Unavailable(f"cannot list pending updates: {problem}")
            chosen = [
                u
                for u in upgrades
                if (u.security or not security_only) and (not names or u.package in names)
            ]
            result: dict[str, Any] = {
                "simulated": not confirm,
                "packages": [_upgrade(u) for u in chosen],
                "snapshot": None,
            }
            if not chosen:
                result.update(returncode=0, output_tail=[], message="nothing to upgrade")
                return result
            self._applying["packages"] = [u.package for u in chosen]
            await progress({"phase": "planned", "packages": result["packages"]})
            with anyio.CancelScope(shield=confirm):
                if confirm and self.config.backup_before_update:
                    replacing = [
                        Installed(u.package, u.current, "") for u in chosen if u.current is not None
                    ]
                    arch = await anyio.to_thread.run_sync(self._arches)
                    replacing = [
                        Installed(i.package, i.version, arch.get(i.package, "")) for i in replacing
                    ]
                    meta = await self.snapshot("before update apply", replacing)
                    result["snapshot"] = meta["id"]
                    await progress({"phase": "snapshot", "snapshot": meta["id"]})
                argv = self.apt.upgrade_command([u.package for u in chosen], simulate=not confirm)
                code, tail = await self._run(argv, progress)
                result.update(returncode=code, output_tail=tail)
                self._cache = None
                if confirm:
                    await self._report(code, chosen, tail, result["snapshot"])
            return result

    def _busy_message(self) -> str:
        current = self._applying
        kind = "confirmed" if current.get("confirmed") else "simulated"
        packages = current.get("packages")
        what = f"{len(packages)} package(s)" if packages is not None else "listing packages"
        elapsed = max(0.0, self.clock() - current.get("since", self.clock()))
        return (
            f"an update is already being applied ({kind}, {what}, for {elapsed:.0f} s);"
            " `status` shows it under components.updates.apply"
        )

    def _arches(self) -> dict[str, str]:
        return {i.package: i.arch for i in self.apt.installed()}

    async def _report(
        self, code: int, chosen: list[Upgrade], tail: list[str], snapshot: str | None
    ) -> None:
        names = ", ".join(u.package for u in chosen[:20])
        if code == 0:
            self.applied += 1
            await self.alerts.notice(
                source="updates",
                labels={"operation": "apply", "outcome": "ok"},
                severity=Severity.INFO,
                category="apt_updates",
                title=f"{len(chosen)} package update(s) applied",
                description=names,
                annotations={"snapshot": snapshot},
            )
        else:
            self.failed += 1
            await self.alerts.notice(
                source="updates",
                labels={"operation": "apply", "outcome": "failed"},
                severity=Severity.ERROR,
                category="apt_updates",
                title=f"package update failed (exit {code})",
                description="\n".join(tail[-TAIL_LINES:]),
                annotations={"snapshot": snapshot, "packages": names},
            )

    async def _run(self, argv: Sequence[str], progress: Progress) -> tuple[int, list[str]]:
        """Run `argv`, streaming its output lines; returns (exit code, the last lines)."""
        tail: list[str] = []
        log.info("running %s", " ".join(argv))
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            with anyio.fail_after(self.config.apply_timeout_seconds):
                async with await anyio.open_process(
                    list(argv), stdin=None, stderr=-2, env=env
                ) as proc:
                    assert proc.stdout is not None
                    buffer = ""
                    count = 0
                    async for text in TextReceiveStream(proc.stdout, errors="replace"):
                        buffer += text
                        *lines, buffer = buffer.split("\n")
                        if lines:
                            count += len(lines)
                            tail = (tail + lines)[-TAIL_LINES:]
                            if count <= MAX_LOG_LINES:
                                await progress({"lines": lines})
                    if buffer:
                        tail = ([*tail, buffer])[-TAIL_LINES:]
                        await progress({"lines": [buffer]})
                    code = await proc.wait()
        except TimeoutError:
            raise Timeout(self.config.apply_timeout_seconds) from None
        return code, tail
