"""Socket methods of self-healing (healing.list) and how it plugs into the daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cortexd.alerts.manager import AlertManager
from cortexd.healing.loop import Healer, unit_name
from cortexd.repair.manager import RepairManager
from cortexd.server import Call, Method, Param
from cortexd.server.registry import between

if TYPE_CHECKING:
    from cortexd.runtime import Runtime

MAX_LIST = 1000


def healing_methods(healer: Healer, repair: RepairManager) -> list[Method]:
    """`healing.list` bound to `healer` (its log lives in the repair database)."""

    async def listing(call: Call) -> dict[str, Any]:
        unit = call.params["unit"]
        entries = await repair.healing_log(unit_name(unit) if unit else None, call.params["limit"])
        return {**healer.state(), "entries": entries}

    return [
        Method(
            "healing.list",
            listing,
            params=(
                Param("unit", str),
                Param("limit", int, default=100, check=between(1, MAX_LIST)),
            ),
            summary="self-healing state and its log, newest first",
        )
    ]


def install(daemon: Runtime, alerts: AlertManager, repair: RepairManager) -> Healer:
    """Build the healer (after the repair manager, whose database holds its log)."""
    healer = Healer(daemon.config, alerts, repair.record_healing)
    daemon.components.append(healer)
    daemon.registry.add(healing_methods(healer, repair))
    return healer
