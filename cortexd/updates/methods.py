"""Socket methods of the update module (docs/protocol.md): check, snapshot(s), rollback, apply."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import anyio

from cortexd.config.collect import ConfigTargets
from cortexd.host.pending import PendingUpdates
from cortexd.server import Call, Method, Param
from cortexd.updates.service import UpdateService

if TYPE_CHECKING:
    from cortexd.alerts import AlertManager
    from cortexd.runtime import Runtime
    from cortexd.store import Stores

CHECK_TIMEOUT = 900.0
SNAPSHOT_TIMEOUT = 900.0
APPLY_TIMEOUT = 86400.0 + 900.0
# Reading the release manifest; downloading a release (a few hundred MB).
SYSTEM_CHECK_TIMEOUT = 120.0
SYSTEM_APPLY_TIMEOUT = 3600.0
_SNAPSHOT_ID = re.compile(r"^\d{8}-\d{6}(-\d+)?$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?$")


def _snapshot_id(value: str) -> str | None:
    return None if _SNAPSHOT_ID.match(value) else "must look like 20261123-120000"


def _packages(value: list[str]) -> str | None:
    if len(value) > 1000:
        return "at most 1000 packages"
    bad = [v for v in value if not _PACKAGE.match(v)]
    return f"not a package name: {bad[0]!r}" if bad else None


def update_methods(service: UpdateService) -> list[Method]:
    """The `updates.*` methods bound to `service`."""

    async def check(call: Call) -> dict[str, Any]:
        return await service.check(force=call.params["force"], limited=not call.is_admin)

    async def snapshot(call: Call) -> dict[str, Any]:
        return {"snapshot": await service.snapshot("requested")}

    async def snapshots(call: Call) -> dict[str, Any]:
        found = await anyio.to_thread.run_sync(service.snapshots.all)
        return {"snapshots": found}

    async def rollback(call: Call) -> dict[str, Any]:
        p = call.params
        return await service.rollback(
            p["id"],
            packages=p["packages"],
            confirm=p["confirm"],
            progress=call.stream,
            caller_uid=call.peer.uid,
        )

    async def apply(call: Call) -> dict[str, Any]:
        p = call.params

        async def progress(data: dict[str, Any]) -> None:
            await call.stream(data)

        await call.stream({"request_id": call.request_id, "phase": "checking"})
        return await service.apply(
            security_only=p["security"],
            names=p["packages"],
            confirm=p["confirm"],
            progress=progress,
        )

    async def system_check(call: Call) -> dict[str, Any]:
        return await service.system.check()

    async def system_apply(call: Call) -> dict[str, Any]:
        async def progress(data: dict[str, Any]) -> None:
            await call.stream(data)

        return await service.system.apply(confirm=call.params["confirm"], progress=progress)

    return [
        Method(
            "updates.check",
            check,
            params=(Param("force", bool, default=False),),
            timeout=CHECK_TIMEOUT,
            summary="pending package upgrades, security ones apart; reboot flag",
        ),
        Method(
            "updates.snapshot",
            snapshot,
            access="admin",
            timeout=SNAPSHOT_TIMEOUT,
            summary="take a snapshot of configuration, state and package list",
        ),
        Method(
            "updates.snapshots",
            snapshots,
            summary="the snapshots, newest first",
        ),
        Method(
            "updates.rollback",
            rollback,
            params=(
                Param("id", str, check=_snapshot_id),
                Param("packages", bool, default=False),
                Param("confirm", bool, default=False),
            ),
            access="admin",
            timeout=APPLY_TIMEOUT,
            summary="restore a snapshot's configuration; optionally reinstall its packages",
        ),
        Method(
            "updates.apply",
            apply,
            params=(
                Param("security", bool, default=False),
                Param("packages", list, default=[], items=str, check=_packages),
                Param("confirm", bool, default=False),
            ),
            access="admin",
            timeout=APPLY_TIMEOUT,
            summary="upgrade pending packages (simulated unless confirm); snapshot first",
        ),
        Method(
            "updates.system_check",
            system_check,
            timeout=SYSTEM_CHECK_TIMEOUT,
            summary="cortexd's installed version and the newest on its release channel",
        ),
        Method(
            "updates.system_apply",
            system_apply,
            params=(Param("confirm", bool, default=False),),
            access="admin",
            timeout=SYSTEM_APPLY_TIMEOUT,
            summary="install the channel's newest cortexd .deb (simulated unless confirm)",
        ),
    ]


def install(
    daemon: Runtime,
    alerts: AlertManager,
    config_targets: ConfigTargets,
    stores: Stores,
    pending: PendingUpdates | None = None,
) -> UpdateService:
    """Add the update service and its methods.

    `config_targets` names the files a rollback may write back, `stores` the
    databases a snapshot copies; `pending` is the monitor's upgrade scan,
    shared so `health` and `updates.check` give one answer.
    """
    service = UpdateService(daemon, alerts, config_targets, stores, pending)
    daemon.components.append(service)
    daemon.registry.add(update_methods(service))
    return service
