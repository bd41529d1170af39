"""The daemon's own methods: ping, version, status, config, shutdown."""

from __future__ import annotations

import logging
import os
import platform
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from cortexd import __version__
from cortexd.config import redacted
from cortexd.protocol import JSONRPC, ConfigError, NotFound
from cortexd.server import Call, Method, Param

if TYPE_CHECKING:
    from cortexd.config import LoadedConfig
    from cortexd.runtime import Runtime
    from cortexd.server import Server

    class Root(Runtime, Protocol):
        """What these methods read of the daemon beyond `Runtime` (`cortexd.app.Daemon`).

        Declared here rather than imported, so the root's modules form no cycle.
        """

        loaded: LoadedConfig
        pending_restart: list[str]
        inherited: bool
        server: Server
        started: float
        started_wall: float

        def request_shutdown(self, reason: str) -> None: ...


log = logging.getLogger(__name__)


def core_methods(daemon: Root) -> list[Method]:
    """The methods every daemon serves, bound to `daemon`."""

    def ping(call: Call) -> dict[str, Any]:
        return {"pong": True, "time": time.time()}

    def version(call: Call) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": JSONRPC,
            "python": platform.python_version(),
        }

    board = daemon.summaries
    pid = os.getpid()

    def status(call: Call) -> dict[str, Any]:
        server = {
            "state": "stopping" if daemon.server.shutting_down else "running",
            "socket": daemon.socket_path,
            "inherited_socket": daemon.inherited,
            "inflight": daemon.server.inflight,
        }
        return {
            "version": __version__,
            "pid": pid,
            "started_at": daemon.started_wall,
            # Whole milliseconds: round(x, 3) costs a tenth of a `ping`.
            "uptime_seconds": int((time.monotonic() - daemon.started) * 1000) / 1000,
            "config_sources": daemon.loaded.sources,  # a tuple: encoded as a list
            "restart_required": list(daemon.pending_restart),
            # Encoded once per publish or `state_max_age`, not per request.
            "components": orjson.Fragment(
                board.components_json({"server": server}, changes=daemon.server.changes)
            ),
            "server": daemon.stats.snapshot(),
        }

    async def config_get(call: Call) -> dict[str, Any]:
        config = redacted(daemon.config)
        section = call.params["section"]
        if section is not None:
            if section not in config:
                raise NotFound(f"no config section {section!r}", section=section)
            config = {section: config[section]}
        return {
            "config": config,
            "sources": list(daemon.loaded.sources),
            "warnings": list(daemon.loaded.warnings),
            "restart_required": list(daemon.pending_restart),
        }

    async def config_reload(call: Call) -> dict[str, Any]:
        try:
            return await daemon.reload(request_id=call.request_id)
        except ConfigError as exc:
            # The same id is on the failure's log line (REQUEST_ID in the journal).
            exc.data["request_id"] = call.request_id
            raise

    async def shutdown(call: Call) -> dict[str, Any]:
        daemon.request_shutdown(f"requested by uid {call.peer.uid} pid {call.peer.pid}")
        return {"shutting_down": True, "grace_seconds": daemon.config.server.shutdown_timeout}

    return [
        Method(
            "ping",
            ping,
            inline=True,
            during_shutdown=True,
            summary="liveness check",
            changes_state=False,
        ),
        Method(
            "version",
            version,
            inline=True,
            during_shutdown=True,
            summary="daemon version",
            changes_state=False,
        ),
        Method(
            "status",
            status,
            inline=True,
            during_shutdown=True,
            summary="daemon status",
            changes_state=False,
        ),
        Method(
            "config.get",
            config_get,
            params=(Param("section", str),),
            summary="the running configuration, secrets redacted",
        ),
        Method(
            "config.reload",
            config_reload,
            access="admin",
            aliases=("config_reload",),
            summary="re-read the configuration files",
        ),
        Method(
            "shutdown",
            shutdown,
            access="admin",
            during_shutdown=True,
            summary="stop the daemon gracefully",
        ),
    ]
