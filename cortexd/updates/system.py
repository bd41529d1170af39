"""cortexd's own package from its release channel: `update check|apply --system`.

`check` reads the manifest `updates.channel` names and says which version is
installed (dpkg), which is the newest for this architecture, and whether it
is newer. `apply` downloads that .deb and refuses it unless its SHA-256 and
control fields are the manifest's; unconfirmed it stops at `apt-get -s`.
Confirmed, it takes a snapshot that keeps the installed version's .deb
(apt's cache, an earlier download, else rebuilt), writes a plan, and starts
`installer.py` as a transient systemd unit: installing the package restarts
this very daemon, so the install, the check that the new one starts, and the
rollback to the kept .deb all happen outside it. Whichever daemon runs when
the installer finishes (the new one, or the old one put back) raises the
alert that says how it went; `status` shows the plan meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from cortexd import __version__
from cortexd.alerts import AlertManager, Severity
from cortexd.config.schema import UpdatesConfig
from cortexd.host.files import atomic_write
from cortexd.host.systemd import systemd_is_pid1
from cortexd.imports import imported
from cortexd.protocol import Busy, Unavailable
from cortexd.updates.apt import Apt, Installed

if TYPE_CHECKING:
    from cortexd.updates import channel

# The release channel's reader (with urllib), the version comparison and the
# installer script load with the first `updates.system.*` call, off the loop:
# most daemons never read a channel. Functions import them where they use them.
CHANNEL_MODULES = (
    "cortexd.updates.channel",
    "cortexd.updates.debversion",
    "cortexd.updates.installer",
)

log = logging.getLogger(__name__)

SERVICE = "cortexd.service"
SOCKET_UNIT = "cortexd.socket"
PLAN = "system-apply.json"
# How long the new daemon has, after dpkg restarted it, to answer on its socket.
START_TIMEOUT = 120.0
WATCH_INTERVAL = 2.0
# A plan still unfinished this long after its unit is gone was interrupted
# (the machine rebooted, the installer was killed).
STALE_AFTER = 60.0
QUERY_TIMEOUT = 60.0
NO_CHANNEL_HINT = (
    "set updates.channel in /etc/cortex/daemon.conf to the release manifest"
    " (file:///path/releases.json or https://host/releases.json), then reload"
)

Progress = Callable[[dict[str, Any]], Awaitable[None]]
Runner = Callable[[Sequence[str], Progress], Awaitable[tuple[int, list[str]]]]
Snapshot = Callable[[str, Sequence[Installed]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Package:
    version: str
    arch: str


class SystemUpdates:
    """The release channel, the plan of a running system update, and its report."""

    def __init__(
        self,
        *,
        state_dir: str,
        config: Callable[[], UpdatesConfig],
        apt: Callable[[], Apt],
        snapshot: Snapshot,
        snapshot_path: Callable[[str], str],
        run: Runner,
        lock: anyio.Lock,
        alerts: AlertManager,
        socket_path: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = os.path.join(state_dir, "updates")
        self.releases_dir = os.path.join(self.dir, "releases")
        self.plan_path = os.path.join(self.dir, PLAN)
        self.config = config
        self.apt = apt
        self.snapshot = snapshot
        self.snapshot_path = snapshot_path
        self.run = run
        self.lock = lock
        self.alerts = alerts
        self.socket_path = socket_path
        self.clock = clock
        self._plan: dict[str, Any] | None = None
        self._wake = anyio.Event()
        # The interpreter itself, not the venv's link to it: the installer
        # must not depend on a file the package it installs replaces.
        self.python = os.path.realpath(sys.executable)

    # -- what status shows ----------------------------------------------------------

    def state(self) -> dict[str, Any] | None:
        """The last system update: id, versions, state, outcome (None if there was none)."""
        plan = self._plan
        if plan is None:
            return None
        keys = ("id", "from", "to", "state", "outcome", "failure", "started_at", "finished_at")
        return {k: plan.get(k) for k in keys}

    def in_progress(self) -> bool:
        plan = self._plan
        return plan is not None and plan.get("state") != "finished"

    # -- check ------------------------------------------------------------------------

    def _channel(self) -> tuple[str, str]:
        from cortexd.updates import channel

        cfg = self.config()
        if not cfg.channel:
            raise Unavailable("no release channel is configured", hint=NO_CHANNEL_HINT)
        return channel.channel_url(cfg.channel), cfg.ca_file

    def _query(self, argv: Sequence[str]) -> str | None:
        done = self.apt().run(argv, QUERY_TIMEOUT)
        return done.stdout if done.returncode == 0 else None

    def installed(self) -> Package | None:
        """cortexd's package as dpkg has it installed (blocking)."""
        from cortexd.updates import channel

        out = self._query(
            ["dpkg-query", "-W", "-f", "${Version}\t${Architecture}\t${db:Status-Abbrev}",
             channel.PACKAGE]
        )  # fmt: skip
        parts = (out or "").split("\t")
        if len(parts) != 3 or not parts[2].startswith("ii"):
            return None
        return Package(parts[0], parts[1])

    def architecture(self) -> str:
        return (self._query(["dpkg", "--print-architecture"]) or "").strip() or "amd64"

    async def _survey(self) -> tuple[str, list[channel.Release], Package | None, str]:
        await imported(*CHANNEL_MODULES)
        from cortexd.updates import channel

        url, ca_file = self._channel()
        releases = await anyio.to_thread.run_sync(channel.fetch_manifest, url, ca_file)
        package = await anyio.to_thread.run_sync(self.installed)
        arch = package.arch if package else await anyio.to_thread.run_sync(self.architecture)
        return url, releases, package, arch

    async def check(self) -> dict[str, Any]:
        """Installed version, the channel's newest, and whether it is newer.

        Raises:
            Unavailable: no channel configured (with a `hint`), or it cannot be read.
            ManifestError: the manifest is not valid (the message names the field).
        """
        url, releases, package, arch = await self._survey()
        from cortexd.updates import channel

        best = channel.newest(releases, arch)
        current = package.version if package else None
        return {
            "channel": channel.shown(url),
            "checked_at": self.clock(),
            "installed": current,
            "running": __version__,
            "architecture": arch,
            "versions": len(releases),
            "newest": best.summary() if best else None,
            "newer": best is not None and _newer(best.version, current),
            "last_apply": self.state(),
        }

    # -- apply ------------------------------------------------------------------------

    async def apply(self, *, confirm: bool, progress: Progress) -> dict[str, Any]:
        """Download and check the newest release; simulate it, or with `confirm` install it.

        A confirmed apply returns once the installer's unit has started; the
        outcome arrives as an alert and in `status`. Cancelled before its
        snapshot, it stops at once; from the snapshot on it runs to the start
        of the unit.

        Raises:
            Busy: another apply, or a system update, is under way.
            Unavailable: no channel, the channel or .deb cannot be read, cortexd
                is not an installed package or not running as cortexd.service
                (confirmed only), or the installed .deb cannot be kept.
            ChecksumMismatch: the download is not what the manifest says;
                nothing was changed.
        """
        if self.lock.locked() or self.in_progress():
            raise Busy(self.busy_message())
        async with self.lock:
            await progress({"phase": "checking"})
            url, releases, package, arch = await self._survey()
            from cortexd.updates import channel

            current = package.version if package else None
            best = channel.newest(releases, arch)
            result: dict[str, Any] = {
                "simulated": not confirm,
                "channel": channel.shown(url),
                "from": current,
                "to": None,
                "release": None,
                "snapshot": None,
            }
            if best is None or not _newer(best.version, current):
                have = current or f"{__version__} (not a package)"
                result.update(message=f"cortexd {have} is up to date with the channel")
                return result
            result.update(to=best.version, release=best.summary())
            if confirm:
                await anyio.to_thread.run_sync(self._ready_to_install, package)
            await progress({"phase": "downloading", "version": best.version})
            deb = await anyio.to_thread.run_sync(
                lambda: channel.download(best, self.releases_dir, self.config().ca_file)
            )
            await progress({"phase": "verified", "sha256": best.sha256})
            if not confirm:
                argv = [*self.apt().apt_command, "-q", "-s", "install", deb]
                code, tail = await self.run(argv, progress)
                result.update(returncode=code, output_tail=tail)
                return result
            assert package is not None
            with anyio.CancelScope(shield=True):
                result.update(await self._launch(package, best, deb, progress))
            return result

    def busy_message(self) -> str:
        """What BUSY says while an apply or a system update runs."""
        plan = self._plan
        if plan is not None and self.in_progress():
            return (
                f"a system update to cortexd {plan.get('to')} is {plan.get('state')}"
                f" (unit {plan.get('unit')}); `status` shows it under components.updates"
            )
        return "an update is already being applied; `status` shows it under components.updates"

    def _ready_to_install(self, package: Package | None) -> None:
        if package is None:
            raise Unavailable(
                "cortexd is not installed as a Debian package here, so there is no package"
                " to upgrade or to roll back to",
                hint="install the .deb first: apt install ./cortexd_VERSION_ARCH.deb",
            )
        if not systemd_is_pid1():
            raise Unavailable("a system update needs systemd as PID 1: it restarts cortexd.service")
        main_pid = self._query(["systemctl", "show", "--property=MainPID", "--value", SERVICE])
        if (main_pid or "").strip() != str(os.getpid()):
            raise Unavailable(
                f"this daemon is not {SERVICE} (its main pid is {(main_pid or '?').strip()},"
                f" this is {os.getpid()}): the update restarts {SERVICE}, not this process"
            )

    async def _launch(
        self, package: Package, release: channel.Release, deb: str, progress: Progress
    ) -> dict[str, Any]:
        from cortexd.updates import channel

        meta = await self.snapshot(
            f"before system update to cortexd {release.version}",
            [Installed(channel.PACKAGE, package.version, package.arch)],
        )
        kept: dict[str, Any] = next(
            (d for d in meta["debs"] if d["package"] == channel.PACKAGE), {}
        )
        if not kept.get("file"):
            raise Unavailable(
                f"cannot keep the installed cortexd {package.version} .deb for a rollback"
                f" ({kept.get('source', 'not saved')}); nothing was installed",
                snapshot=meta["id"],
            )
        await progress({"phase": "snapshot", "snapshot": meta["id"]})
        plan = {
            "id": meta["id"],
            "package": channel.PACKAGE,
            "from": package.version,
            "to": release.version,
            "new_deb": deb,
            "kept_deb": os.path.join(self.snapshot_path(meta["id"]), "debs", kept["file"]),
            "snapshot": meta["id"],
            "service": SERVICE,
            "socket_unit": SOCKET_UNIT,
            "socket": self.socket_path(),
            "daemon_pid": os.getpid(),
            "apt_command": list(self.apt().apt_command),
            "start_timeout": START_TIMEOUT,
            "unit": f"cortexd-system-update-{meta['id']}",
            "state": "scheduled",
            "outcome": None,
            "started_at": self.clock(),
            "finished_at": None,
            "log_tail": [],
            "reported": False,
        }
        script = await anyio.to_thread.run_sync(self._write_plan, plan, package, deb)
        argv = [
            "systemd-run", f"--unit={plan['unit']}", "--collect", "--quiet",
            f"--description=cortexd system update to {release.version}",
            "--setenv=DEBIAN_FRONTEND=noninteractive", "--",
            self.python, "-I", script, self.plan_path,
        ]  # fmt: skip
        code, tail = await self.run(argv, progress)
        if code != 0:
            await anyio.to_thread.run_sync(
                self._finish_plan, {"outcome": "not started", "failure": " ".join(tail[-3:])}
            )
            raise Unavailable(
                f"could not start the installer unit (exit {code}): {' '.join(tail[-3:])};"
                " nothing was installed",
                snapshot=meta["id"],
            )
        log.info("system update to %s started in %s", release.version, plan["unit"])
        await progress({"phase": "installing", "unit": plan["unit"]})
        self._wake.set()
        return {"snapshot": meta["id"], "apply_id": meta["id"], "unit": plan["unit"],
                "state": "installing"}  # fmt: skip

    def _write_plan(self, plan: dict[str, Any], package: Package, deb: str) -> str:
        """Write the plan and the installer's copy; keep only the downloads still useful."""
        from cortexd.updates import channel, installer

        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        script = os.path.join(self.dir, "installer.py")
        shutil.copyfile(installer.__file__, script)
        keep = {os.path.basename(deb), channel.deb_name(package.version, package.arch)}
        for name in os.listdir(self.releases_dir):
            if name not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.releases_dir, name))
        _write_json(self.plan_path, plan)
        self._plan = plan
        return script

    # -- the outcome ----------------------------------------------------------------

    def _read_plan(self) -> dict[str, Any] | None:
        try:
            with open(self.plan_path, "rb") as fh:
                data = orjson.loads(fh.read())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("cannot read %s: %s", self.plan_path, exc)
            return None
        return data if isinstance(data, dict) else None

    def _finish_plan(self, changes: dict[str, Any]) -> dict[str, Any] | None:
        plan = self._read_plan()
        if plan is not None:
            plan.update(state="finished", finished_at=self.clock(), **changes)
            _write_json(self.plan_path, plan)
        return plan

    def _unit_gone(self, plan: dict[str, Any]) -> bool:
        if not systemd_is_pid1() or self.clock() - float(plan.get("started_at") or 0) < STALE_AFTER:
            return False
        unit = plan["unit"]
        state = self._query(["systemctl", "show", "--property=ActiveState", "--value", unit])
        return (state or "").strip() in ("inactive", "failed")

    async def watch(self) -> None:
        """Follow the plan until it finishes, then raise its alert once; runs for good."""
        while True:
            # A fresh event before reading: an apply that writes its plan while
            # this reads still wakes the wait below.
            wake = self._wake = anyio.Event()
            plan = await anyio.to_thread.run_sync(self._read_plan)
            if (
                plan is not None
                and plan.get("state") != "finished"
                and await anyio.to_thread.run_sync(self._unit_gone, plan)
            ):
                unit = plan["unit"]
                plan = await anyio.to_thread.run_sync(
                    self._finish_plan, {"outcome": "interrupted", "failure": f"{unit} ended early"}
                )
            self._plan = plan
            if plan is not None and plan.get("state") == "finished" and not plan.get("reported"):
                await self._report(plan)
                plan["reported"] = True
                await anyio.to_thread.run_sync(_write_json, self.plan_path, plan)
            if plan is None or plan.get("reported"):
                await wake.wait()
            else:
                await anyio.sleep(WATCH_INTERVAL)

    async def _report(self, plan: dict[str, Any]) -> None:
        outcome = plan.get("outcome")
        old, new = plan.get("from"), plan.get("to")
        tail = "\n".join(plan.get("log_tail") or [])
        if outcome == "updated":
            severity, title = Severity.INFO, f"cortexd updated from {old} to {new}"
        elif outcome == "rolled back":
            severity = Severity.ERROR
            title = f"cortexd {new} did not start; rolled back to {old}"
        else:
            severity = Severity.ERROR
            title = f"cortexd update to {new}: {outcome}; check the package state"
        log.log(logging.INFO if severity == Severity.INFO else logging.ERROR, "%s", title)
        await self.alerts.notice(
            source="updates",
            labels={"operation": "system_apply", "update": str(plan.get("id"))},
            severity=severity,
            category="daemon_status",
            title=title,
            description=(plan.get("failure") or "") + ("\n" + tail if tail else ""),
            annotations={"snapshot": plan.get("snapshot"), "unit": plan.get("unit")},
            # What happened to one update: it is told once and resolves on its own.
            event=True,
        )


def _newer(version: str, installed: str | None) -> bool:
    from cortexd.updates import debversion

    baseline = installed or __version__
    try:
        return debversion.compare(version, baseline) > 0
    except ValueError:
        return True


def _write_json(path: str, data: dict[str, Any]) -> None:
    atomic_write(path, orjson.dumps(data, option=orjson.OPT_INDENT_2))
