"""The update module: check, snapshot, apply and roll back (docs/protocol.md).

`check` answers from the daemon's one upgrade scan (`PendingUpdates`, which
the monitor's update checks and `health` read too) while it is younger than
`updates.check_interval_hours` and dpkg's status and the package lists are
unchanged; a confirmed apply forgets it. The reboot flag is read afresh on
every call. A forced check (which runs `apt-get update` as root) is
single-flight — one asked for while another runs joins it — and a reader gets
at most one per `updates.force_interval`; past that, the latest answer with
its age.
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
from cortexd.config.collect import ConfigTargets, collect_config
from cortexd.config.rootonly import is_root_or_owner
from cortexd.config.schema import Config, UpdatesConfig
from cortexd.host.packages import read_reboot_flag, reboot_flag_path
from cortexd.host.pending import PendingUpdates, Upgrade
from cortexd.imports import imported
from cortexd.protocol import Busy, Timeout, Unavailable
from cortexd.sharedwork import SharedWork
from cortexd.updates.apt import Apt, Installed
from cortexd.updates.snapshots import Snapshots, package_changes
from cortexd.updates.system import SystemUpdates

if TYPE_CHECKING:
    from cortexd.runtime import Runtime
    from cortexd.store import Stores

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
        self,
        daemon: Runtime,
        alerts: AlertManager,
        config_targets: ConfigTargets,
        stores: Stores,
        pending: PendingUpdates | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.daemon = daemon
        self.config_targets = config_targets
        self.stores = stores
        self.alerts = alerts
        self.clock = clock
        self.pending = pending or PendingUpdates(
            apt_command=self.config.apt_command,
            lists_dir=self.config.apt_lists_dir,
            dpkg_status=self.config.dpkg_status_path,
            clock=clock,
        )
        self.apt = Apt(self.config.apt_command, lists_dir=self.config.apt_lists_dir)
        self.snapshots = Snapshots(os.path.join(daemon.config.state_dir, "snapshots"), self.apt)
        self._check_lock = anyio.Lock()
        self._forced: SharedWork[dict[str, Any]] = SharedWork(clock)
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
        scan = self.pending.latest
        return {
            "state": "applying" if self._apply_lock.locked() else "running",
            "applying": self._apply_lock.locked(),
            "apply": self._applying if self._apply_lock.locked() else None,
            "applied": self.applied,
            "failed": self.failed,
            "last_check": scan.checked_at if scan else None,
            "pending": len(scan.upgrades) if scan and scan.problem is None else None,
            "system_apply": self.system.state(),
        }

    async def start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._housekeeping)
        tg.start_soon(self.system.watch)

    def apply_config(self, config: Config) -> None:
        self.apt = Apt(config.updates.apt_command, lists_dir=config.updates.apt_lists_dir)
        self.snapshots.apt = self.apt
        self.pending.configure(
            apt_command=config.updates.apt_command,
            lists_dir=config.updates.apt_lists_dir,
            dpkg_status=config.updates.dpkg_status_path,
        )

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

    async def check(self, *, force: bool = False, limited: bool = False) -> dict[str, Any]:
        """Pending upgrades (security ones apart), reboot flag, package list age.

        `force` refreshes the package lists first. With `limited` (a reader),
        a forced check within `updates.force_interval` of the last one is
        answered without a refresh instead (`force_limited`, `age_seconds`).

        Raises:
            CommandFailed: apt failed (nothing is cached).
        """
        if not force:
            return await self._check(force=False)
        outcome = await self._forced.run(
            "force",
            lambda: self._check(force=True),
            limited=limited,
            min_interval=self.config.force_interval,
        )
        if outcome.how == "joined":
            return {**outcome.value, "joined": True}
        if outcome.how == "ran":
            return outcome.value
        # The latest scan (the forced one, or a newer scheduled one), reboot flag read afresh.
        latest = await self._check(force=False)
        return {
            **latest,
            "cached": True,
            "age_seconds": round(max(0.0, self.clock() - latest["checked_at"]), 1),
            "force_limited": True,
            "next_force_in": round(self.config.force_interval - outcome.age_seconds, 1),
        }

    async def _check(self, *, force: bool) -> dict[str, Any]:
        async with self._check_lock:
            refreshed = None
            if force:
                done = await anyio.to_thread.run_sync(self.apt.refresh)
                refreshed = done.returncode == 0
                if not refreshed:
                    log.warning("apt-get update failed: %s", done.stderr.strip()[-300:])
            before = self.pending.latest
            max_age = 0.0 if force else self.config.check_interval_hours * HOUR
            scan = await anyio.to_thread.run_sync(self.pending.scan, max_age)
            flag_path = reboot_flag_path(self.daemon.config.checks.reboot_required)
            reboot = await anyio.to_thread.run_sync(read_reboot_flag, flag_path)
            security = [_upgrade(u) for u in scan.security]
            age = scan.lists_age
            return {
                "checked_at": scan.checked_at,
                "cached": scan is before,
                "available": scan.problem is None,
                "problem": scan.problem,
                "lists_refreshed_at": None if age is None else scan.checked_at - age,
                "lists_age_seconds": age,
                "lists_refresh_ok": refreshed,
                "upgrades": [_upgrade(u) for u in scan.upgrades if not u.security],
                "security": security,
                "counts": {"total": len(scan.upgrades), "security": len(security)},
                "reboot_required": reboot.required,
                "reboot_packages": list(reboot.packages),
            }

    # -- snapshots -----------------------------------------------------------------

    async def snapshot(self, reason: str, replacing: Sequence[Installed] = ()) -> dict[str, Any]:
        state_dir = self.daemon.config.state_dir
        copy = self.stores.copier()
        now = self.clock()

        def take() -> dict[str, Any]:
            found = collect_config(self.config_targets())
            return self.snapshots.take(
                state_dir,
                found.files,
                reason=reason,
                replacing=replacing,
                now=now,
                copier=copy,
                left_out=found.left_out,
            )

        meta = await anyio.to_thread.run_sync(take)
        log.info("snapshot %s taken (%s)", meta["id"], reason)
        return meta

    async def rollback(
        self,
        snap_id: str | None,
        *,
        packages: bool,
        confirm: bool,
        progress: Progress,
        caller_uid: int,
    ) -> dict[str, Any]:
        """Restore a snapshot's configuration; optionally reinstall its saved .debs.

        The configuration and the plugins go back through
        `cortexd.config.restore`, as a backup's do: only to the files the
        daemon reads and into its plugins directory, never changing a
        root-only key or a plugin file for a caller other than root.

        Raises:
            NotFound: no such snapshot.
            RootOnlyChange: the snapshot's configuration differs from the
                current one in root-only keys or plugin files and the caller
                is not root (nothing was written).
            ConfigError: the snapshot's daemon.conf or rules file does not validate.
        """
        meta = await anyio.to_thread.run_sync(self.snapshots.get, snap_id)
        await imported("cortexd.config.restore")  # on first use, off the loop
        from cortexd.config.restore import (
            plan_config_restore,
            reload_restored,
            staged_files,
            write_config_files,
        )

        root = self.snapshots.path(meta["id"])
        staged = staged_files(meta["config"], root)
        plan = await anyio.to_thread.run_sync(
            lambda: plan_config_restore(
                staged, self.config_targets(), privileged=is_root_or_owner(caller_uid)
            )
        )
        for skipped in plan.skipped:
            log.warning("rollback: not writing %s: %s", skipped["origin"], skipped["reason"])
        written = await anyio.to_thread.run_sync(write_config_files, plan)
        reload = await reload_restored(plan, written, self.daemon.reload)
        then = await anyio.to_thread.run_sync(self.snapshots.packages, meta["id"])
        installed = await anyio.to_thread.run_sync(self.apt.installed)
        changes = package_changes(then, {i.package: i.version for i in installed})
        result: dict[str, Any] = {
            "snapshot": meta["id"],
            "config_restored": written,
            "config_skipped": plan.skipped,
            "plugins_restored": plan.plugins(written),
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
                if confirm:
                    self.pending.invalidate("an update apply ran")
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
            # Something that happened: it ends on its own (alerts.event_ttl_seconds).
            await self.alerts.notice(
                source="updates",
                labels={"operation": "apply", "outcome": "ok"},
                severity=Severity.INFO,
                category="apt_updates",
                title=f"{len(chosen)} package update(s) applied",
                description=names,
                annotations={"snapshot": snapshot},
                event=True,
            )
            # An earlier failure is over once an apply succeeds.
            await self.alerts.condition_cleared(
                source="updates",
                labels={"operation": "apply", "outcome": "failed"},
                description=f"a later update applied: {names}",
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
