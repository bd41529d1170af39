"""Socket methods of the plugin manager (plugins.*) and how it plugs into the daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from cortexd.monitor.scheduler import Monitor
from cortexd.notify.actions import ActionTypes
from cortexd.plugins.hooks import HookRegistry
from cortexd.plugins.manager import PluginManager
from cortexd.server import Call, Method, Param

if TYPE_CHECKING:
    from cortexd.runtime import Runtime

RELOAD_TIMEOUT = 120.0


def plugin_methods(manager: PluginManager) -> list[Method]:
    """The plugins.* methods bound to `manager`."""

    async def listing(call: Call) -> dict[str, Any]:
        if call.params["scan"]:
            return await anyio.to_thread.run_sync(manager.on_disk)
        return manager.listing()

    async def enable(call: Call) -> dict[str, Any]:
        return await manager.set_enabled(call.params["name"], True)

    async def disable(call: Call) -> dict[str, Any]:
        return await manager.set_enabled(call.params["name"], False)

    async def reload(call: Call) -> dict[str, Any]:
        return await manager.reload()

    name = (Param("name", str, required=True),)
    return [
        Method(
            "plugins.list",
            listing,
            params=(Param("scan", bool, default=False),),
            summary="plugins found and their state (scan: as the directory is now)",
        ),
        Method(
            "plugins.enable",
            enable,
            params=name,
            access="admin",
            timeout=RELOAD_TIMEOUT,
            summary="enable a plugin (persisted) and reload",
        ),
        Method(
            "plugins.disable",
            disable,
            params=name,
            access="admin",
            timeout=RELOAD_TIMEOUT,
            summary="disable a plugin (persisted) and reload",
        ),
        Method(
            "plugins.reload",
            reload,
            access="admin",
            timeout=RELOAD_TIMEOUT,
            summary="load the plugin directory again",
        ),
    ]


def install(
    daemon: Runtime,
    monitor: Monitor,
    hooks: HookRegistry,
    action_types: ActionTypes | None = None,
) -> PluginManager:
    """Build the plugin manager; its checks join the monitor, its hooks `hooks`,
    its notifier plugins' action types `action_types` (the notifier's)."""
    manager = PluginManager(
        daemon.config,
        daemon.registry,
        hooks,
        refresh_checks=monitor.refresh_checks,
        action_types=action_types,
    )
    monitor.add_checks(manager.checks)
    monitor.before_check.append(manager.before_check)
    monitor.after_check.append(manager.after_check)
    daemon.components.append(manager)
    daemon.registry.add(plugin_methods(manager))
    return manager
