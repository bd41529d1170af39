"""The composition root: builds every component from the config and runs them.

Lifecycle (uvicorn's order): bind → serve → READY=1 → … → STOPPING=1 → stop
accepting → let in-flight requests finish within `server.shutdown_timeout` →
cancel the rest → stop components (they persist their state) → remove the
socket file we created.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from cortexd import __version__
from cortexd.config import Config, LoadedConfig, load_config, restart_required
from cortexd.log import set_level
from cortexd.protocol import ConfigError
from cortexd.sd import Notifier, inherited_socket
from cortexd.server import (
    Authorizer,
    BoundSocket,
    Registry,
    Server,
    ServerStats,
    bind_socket,
    raise_fd_limit,
    remove_socket,
)

log = logging.getLogger(__name__)

JOURNAL_GROUPS = ("adm", "systemd-journal")
STATUS_INTERVAL = 30.0


class Component(Protocol):
    """A long-running part of the daemon that the root starts, reloads and stops."""

    name: str

    def state(self) -> dict[str, Any]:
        """A small JSON-ready summary for `status` (at least `state`)."""

    async def start(self, tg: TaskGroup) -> None:
        """Start background work in `tg`; return once the component serves."""

    def apply_config(self, config: Config) -> None:
        """Take a reloaded config (only settings that can change live)."""

    async def stop(self) -> None:
        """Finish or cancel work and persist state; bounded by the caller's deadline."""


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Daemon:
    """Everything the daemon runs, built from one loaded config."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        config_path: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.pending_restart: list[str] = []
        self._config_path = config_path
        self._overrides = dict(overrides or {})
        self.notifier = notifier or Notifier()
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.registry = Registry()
        self.stats = ServerStats()
        self._admin_gid = _gid(self.config.server.admin_group)
        journal_gids = frozenset(g for g in map(_gid, JOURNAL_GROUPS) if g is not None)
        self.authorizer = Authorizer(lambda: self._admin_gid, journal_gids)
        self.server = Server(self.config.server, self.registry, self.stats, self.authorizer)
        self.components: list[Component] = []
        self.bound: BoundSocket | None = None
        self.inherited = False
        self._shutdown = anyio.Event()
        self._reload_lock = anyio.Lock()
        self._tg: TaskGroup | None = None

        from cortexd.core_methods import core_methods
        from cortexd.features import install_features

        self.registry.add(core_methods(self))
        install_features(self)

    # -- lifecycle -------------------------------------------------------

    async def run(self) -> None:
        """Serve until shutdown is requested. Raises on start-up failure."""
        raise_fd_limit(self.config.server.max_connections)
        sock = await self._listening_socket()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self.server.serve, sock)
                for component in self.components:
                    await component.start(tg)
                tg.start_soon(self._signals)
                tg.start_soon(self._watchdog)
                self.notifier.ready(self._status_line())
                log.info(
                    "cortexd %s serving on %s (pid %d)",
                    __version__,
                    self.socket_path,
                    os.getpid(),
                )
                await self._shutdown.wait()
                await self._stop()
                tg.cancel_scope.cancel()
        finally:
            if self.bound is not None:
                remove_socket(self.bound)
            log.info("stopped")

    async def _listening_socket(self) -> socket.socket:
        inherited = inherited_socket()
        if inherited is not None:
            self.inherited = True
            log.info("using the socket passed by systemd")
            return inherited
        self.bound = await anyio.to_thread.run_sync(bind_socket, self.config.server)
        return self.bound.sock

    @property
    def socket_path(self) -> str:
        if self.bound is not None:
            return self.bound.path
        return self.config.server.socket_path

    def request_shutdown(self, reason: str) -> None:
        if not self._shutdown.is_set():
            log.info("shutting down: %s", reason)
            self._shutdown.set()

    async def _stop(self) -> None:
        self.notifier.stopping()
        self.server.stop_accepting()
        timeout = self.config.server.shutdown_timeout
        if not await self.server.drain(timeout):
            log.warning(
                "%d requests still running after %gs; cancelling them",
                self.server.inflight,
                timeout,
            )
        self.server.close_connections()
        for component in reversed(self.components):
            with anyio.move_on_after(timeout, shield=True):
                try:
                    await component.stop()
                except Exception:  # isolation boundary: one component's failure is logged
                    log.exception("stopping %s failed", component.name)

    def force_exit(self) -> None:
        """Second SIGINT: skip the grace period."""
        log.warning("second interrupt: stopping now")
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _signals(self) -> None:
        interrupts = 0
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._tg_start(self._reload_from_signal)
                elif signum == signal.SIGINT:
                    interrupts += 1
                    if interrupts > 1:
                        self.force_exit()
                    self.request_shutdown("SIGINT")
                else:
                    self.request_shutdown("SIGTERM")

    def _tg_start(self, fn: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(fn)

    async def _reload_from_signal(self) -> None:
        try:
            await self.reload()
        except ConfigError as exc:
            log.error("reload on SIGHUP failed; keeping the running config: %s", exc.message)

    async def _watchdog(self) -> None:
        """Feed systemd's watchdog from the loop itself, so a blocked loop starves it."""
        period = self.notifier.watchdog_seconds
        interval = period / 2 if period else STATUS_INTERVAL
        last_status = time.monotonic()
        while True:
            if period:
                self.notifier.watchdog()
            now = time.monotonic()
            if now - last_status >= STATUS_INTERVAL:
                self.notifier.status(self._status_line())
                last_status = now
            await anyio.sleep(interval)

    def _status_line(self) -> str:
        return (
            f"serving on {self.socket_path}; {self.stats.connections_open} connections; "
            f"{sum(self.stats.requests.values())} requests"
        )

    # -- reload ----------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; a bad one keeps the running config and raises.

        Raises:
            ConfigError: the new config failed validation (nothing changed).
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                loaded = await anyio.to_thread.run_sync(
                    lambda: load_config(self._config_path, self._overrides)
                )
            except ConfigError:
                self.notifier.ready(self._status_line())
                raise
            pending = restart_required(self.config, loaded.config)
            live = _keep_restart_settings(self.config, loaded.config, pending)
            self.loaded = dataclasses.replace(loaded, config=live)
            self.config = live
            self.pending_restart = pending
            self._admin_gid = _gid(live.server.admin_group)
            set_level(live.logging.level)
            self.server.apply_config(live.server)
            for component in self.components:
                component.apply_config(live)
            for warning in loaded.warnings:
                log.warning("%s", warning)
            log.info("configuration reloaded from %s", ", ".join(loaded.sources) or "defaults")
            self.notifier.ready(self._status_line())
            return {
                "reloaded": True,
                "sources": list(loaded.sources),
                "warnings": list(loaded.warnings),
                "restart_required": pending,
            }


def _keep_restart_settings(old: Config, new: Config, keys: list[str]) -> Config:
    """`new`, except that settings needing a restart keep their running values."""
    result = new
    for key in keys:
        if "." not in key:
            result = dataclasses.replace(result, **{key: getattr(old, key)})
            continue
        section, name = key.split(".", 1)
        merged = dataclasses.replace(
            getattr(result, section), **{name: getattr(getattr(old, section), name)}
        )
        result = dataclasses.replace(result, **{section: merged})
    return result
