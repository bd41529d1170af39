"""The composition root: builds every component from the config and runs them.

Lifecycle: signals → bind and listen → READY=1 → import, build and start the
features' components → accept → … → STOPPING=1 → new requests answered
SHUTTING_DOWN → in-flight requests finish within `server.shutdown_timeout` →
cancel the rest → stop components (they persist their state) → remove the
socket file we created (never one inherited from systemd). A second SIGINT
skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup
from anyio.streams.stapled import MultiListener

from cortexd import __version__
from cortexd.config import (
    LoadedConfig,
    keep_running_values,
    load_config,
    restart_required,
)
from cortexd.log import set_level
from cortexd.protocol import ConfigError
from cortexd.runtime import Component
from cortexd.sd import SystemdNotifier, inherited_socket
from cortexd.server import (
    Authorizer,
    BoundSocket,
    Registry,
    Server,
    ServerStats,
    bind_socket,
    bind_tcp,
    raise_fd_limit,
    remove_socket,
)
from cortexd.store.statedir import ensure_state_dir
from cortexd.summaries import SummaryBoard

log = logging.getLogger(__name__)

JOURNAL_GROUPS = ("adm", "systemd-journal")
STATUS_INTERVAL = 30.0
# Components get at least this long to persist their state on shutdown, even
# when draining requests used up all of `server.shutdown_timeout`.
MIN_COMPONENT_STOP = 2.0


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Daemon:
    """Everything the daemon runs, built from one loaded config.

    `loader` re-reads the config on reload (by default the same files and
    command-line overrides as at start: `config_path`, `overrides`).
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        config_path: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        notifier: SystemdNotifier | None = None,
        loader: Callable[[], LoadedConfig] | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.pending_restart: list[str] = []
        frozen_overrides = dict(overrides or {})
        self._loader = loader or (lambda: load_config(config_path, frozen_overrides))
        self.notifier = notifier or SystemdNotifier()
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.registry = Registry()
        self.stats = ServerStats()
        self._admin_gid = _gid(self.config.server.admin_group)
        journal_gids = frozenset(g for g in map(_gid, JOURNAL_GROUPS) if g is not None)
        self.authorizer = Authorizer(
            lambda: self._admin_gid,
            journal_gids,
            admin_group=lambda: self.config.server.admin_group,
            journal_groups=JOURNAL_GROUPS,
        )
        self.server = Server(self.config.server, self.registry, self.stats, self.authorizer)
        self.components: list[Component] = []
        self.summaries = SummaryBoard(self.components)
        self.bound: BoundSocket | None = None
        self.inherited = False
        self._inherited_path = ""
        self.forced = False
        self._shutdown = anyio.Event()
        self._reload_lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._installed = False
        self._started = anyio.Event()
        self._http: MultiListener[SocketStream] | None = None

        from cortexd.core_methods import core_methods

        self.registry.add(core_methods(self))

    def install_features(self) -> None:
        """Build every feature's components and register their methods (once).

        `run` does this after READY=1; call it first to inspect or replace
        the components before running.
        """
        if self._installed:
            return
        from cortexd.features import install_features

        install_features(self, lambda: self.loaded.sources)
        self._installed = True

    # -- lifecycle -------------------------------------------------------

    async def run(self) -> None:
        """Serve until shutdown is requested, then stop gracefully.

        Raises:
            CortexError, OSError: start-up failed (socket in use or unsafe,
                cannot bind); anyio wraps them in an ExceptionGroup.
        """
        raise_fd_limit(self.config.server.max_connections)
        asyncio.get_running_loop().set_exception_handler(_loop_exception)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                # Signals first, so a SIGTERM during start-up still stops cleanly.
                await tg.start(self._signals)
                sock = await self._listening_socket()
                # A database that cannot open costs its feature; a state
                # directory that cannot be written costs all of them.
                await anyio.to_thread.run_sync(ensure_state_dir, self.config.state_dir)
                self._http = await self._bind_http()
                # READY=1 once the socket listens, before the features are
                # imported and started (most of the start-up time), as under
                # socket activation: units ordered after this one go on, and a
                # client that connects meanwhile waits in the listen backlog
                # rather than reaching a component that is not serving yet.
                tg.start_soon(self._watchdog)
                self.notifier.ready(self._status_line())
                await self._start_features(tg)
                await tg.start(self.server.serve, sock)
                self.notifier.status(self._status_line())
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
            if self._http is not None:  # bound, never served: start-up failed
                with anyio.CancelScope(shield=True):
                    await self._http.aclose()
            if self.bound is not None:
                remove_socket(self.bound)
            log.info("stopped" if not self.forced else "stopped without waiting")

    async def _start_features(self, tg: TaskGroup) -> None:
        """Import, build and start every feature's components, in order.

        The imports run in a worker thread so the loop keeps feeding the
        watchdog and handling signals meanwhile.
        """
        if not self._installed:
            await anyio.to_thread.run_sync(_prepare_features)
            self.install_features()
        for component in self.components:
            await component.start(tg)
        self._started.set()

    async def _bind_http(self) -> MultiListener[SocketStream] | None:
        """The metrics HTTP port, bound before READY=1 like the Unix socket: a
        probe right after start waits in the backlog rather than being refused,
        and a port in use fails the start."""
        metrics = self.config.metrics
        if not metrics.http_enabled:
            return None
        return await bind_tcp(metrics.http_host, metrics.http_port)

    def take_http_listener(self) -> MultiListener[SocketStream] | None:
        """The metrics HTTP port `run` bound, handed over once (None otherwise)."""
        listener, self._http = self._http, None
        return listener

    async def _listening_socket(self) -> socket.socket:
        inherited = inherited_socket()
        if inherited is not None:
            self.inherited = True
            self._inherited_path = _socket_name(inherited)
            log.info("using the socket passed by systemd: %s", self._inherited_path)
            return inherited
        self.bound = await anyio.to_thread.run_sync(bind_socket, self.config.server)
        return self.bound.sock

    @property
    def socket_path(self) -> str:
        """The path clients connect to (the inherited socket's, under socket activation)."""
        if self.bound is not None:
            return self.bound.path
        if self._inherited_path:
            return self._inherited_path
        return self.config.server.socket_path

    @property
    def stopping(self) -> bool:
        """True once a shutdown has been requested."""
        return self._shutdown.is_set()

    def state_changes(self) -> int:
        """Requests answered so far of methods that may change state (`Method.changes_state`)."""
        return self.server.changes

    def serving(self) -> bool:
        """Whether the socket accepts requests now (bound, not shutting down)."""
        return self.server.accepting and not self.server.shutting_down and not self.stopping

    async def wait_stopping(self) -> None:
        """Return once a shutdown has been requested (for components that must
        answer their own waiting requests before the connections close)."""
        await self._shutdown.wait()

    def request_shutdown(self, reason: str) -> None:
        """Begin a graceful shutdown (idempotent)."""
        if not self._shutdown.is_set():
            log.info("shutting down: %s", reason)
            self._shutdown.set()

    async def _stop(self) -> None:
        """Drain, then stop components; bounded by `server.shutdown_timeout`.

        On cancellation (a forced exit) the remaining steps are skipped.
        """
        self.notifier.stopping()
        self.server.stop_accepting()
        timeout = self.config.server.shutdown_timeout
        deadline = time.monotonic() + timeout
        if not await self.server.drain(timeout):
            log.warning(
                "%d requests still running after %gs; cancelling them",
                self.server.inflight,
                timeout,
            )
        self.server.close_connections()
        budget = max(deadline - time.monotonic(), MIN_COMPONENT_STOP)
        with anyio.move_on_after(budget) as scope:
            for component in reversed(self.components):
                try:
                    await component.stop()
                except Exception:  # isolation boundary: one component's failure is logged
                    log.exception("stopping %s failed", component.name)
        if scope.cancelled_caught:
            log.warning("components did not stop within %gs", budget)

    def force_exit(self) -> None:
        """Skip the grace period: cancel everything now (second SIGINT)."""
        log.warning("second interrupt: stopping now without waiting for requests")
        self.forced = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """SIGTERM/SIGINT stop gracefully, SIGINT while stopping forces, SIGHUP reloads.

        The handlers only set state or start a task; the work runs in the loop.
        """
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._tg_start(self._reload_from_signal)
                elif signum == signal.SIGINT and self.stopping:
                    self.force_exit()
                elif signum == signal.SIGINT:
                    self.request_shutdown("SIGINT (interrupt again to stop at once)")
                elif self.stopping:
                    log.info("already shutting down; SIGINT stops at once")
                else:
                    self.request_shutdown("SIGTERM")

    def _tg_start(self, fn: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(fn)

    async def _reload_from_signal(self) -> None:
        if self.stopping:
            log.info("SIGHUP ignored: shutting down")
            return
        # A SIGHUP during start-up applies once every component has started.
        await self._started.wait()
        log.info("SIGHUP: reloading the configuration")
        # A bad file keeps the running config; reload() has logged why.
        with contextlib.suppress(ConfigError):
            await self.reload()

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
        if not self._started.is_set():
            return f"starting; listening on {self.socket_path}"
        return (
            f"serving on {self.socket_path}; {self.stats.connections_open} connections; "
            f"{self.stats.requests_total} requests"
        )

    # -- reload ----------------------------------------------------------

    async def reload(self, request_id: str | None = None) -> dict[str, Any]:
        """Re-read the config; a bad one keeps the running config and raises.

        Settings that need a restart keep their running values and are
        listed in the answer's `restart_required`. `request_id` tags the log
        lines of a reload asked for over the socket.

        Raises:
            ConfigError: the new config failed validation (nothing changed).
        """
        context = {"REQUEST_ID": request_id} if request_id else {}
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                loaded = await anyio.to_thread.run_sync(self._loader)
            except ConfigError as exc:
                self.notifier.ready(self._status_line())
                log.error(
                    "configuration reload failed; keeping the running config: %s",
                    "; ".join(exc.errors),
                    extra=context,
                )
                raise
            pending = restart_required(self.config, loaded.config)
            live = keep_running_values(self.config, loaded.config, pending)
            self.loaded = dataclasses.replace(loaded, config=live)
            self.config = live
            self.pending_restart = pending
            self._admin_gid = _gid(live.server.admin_group)
            set_level(live.logging.level)
            self.server.apply_config(live.server)
            for component in self.components:
                try:
                    component.apply_config(live)
                except Exception:  # isolation boundary: one component keeps its old settings
                    log.exception("%s could not apply the reloaded config", component.name)
            for warning in loaded.warnings:
                log.warning("%s", warning, extra=context)
            if pending:
                log.warning(
                    "these settings change only on restart: %s", ", ".join(pending), extra=context
                )
            log.info(
                "configuration reloaded from %s",
                ", ".join(loaded.sources) or "defaults",
                extra=context,
            )
            self.notifier.ready(self._status_line())
            return {
                "reloaded": True,
                "sources": list(loaded.sources),
                "warnings": list(loaded.warnings),
                "restart_required": pending,
            }


# mallopt(3)'s M_ARENA_MAX, and the cap: glibc gives each thread that
# allocates its own arena, up to 8 per core, and freed memory stays in the
# arena that held it. The worker threads (checks, SQLite, journal reads) each
# kept 0.1-2.6 MB that way; with two arenas the idle daemon measured 38.8 MB
# against 39.3-39.5 MB (RSS once its start-up work is done, bench/ipc.py).
_M_ARENA_MAX = -8
_MALLOC_ARENAS = 2


def _prepare_features() -> None:
    """Cap malloc's arenas, then import the features (in the first worker thread)."""
    import ctypes

    from cortexd.features import import_features

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to cap
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, _MALLOC_ARENAS)
    import_features()


def _socket_name(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return ""
    return name if isinstance(name, str) else ""


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Report what asyncio could not deliver through the daemon's own log.

    One report is a known race, not a fault: anyio wakes a task waiting on a
    socket with `Future.set_result` from the selector; when that task is
    cancelled in the same loop iteration (a connection closed at shutdown just
    as its client hung up), the wake-up finds the future cancelled. Nothing
    is lost, so it is logged at DEBUG instead of as a traceback.
    """
    exc = context.get("exception")
    if isinstance(exc, asyncio.InvalidStateError) and "set_result" in repr(context.get("handle")):
        log.debug("late socket wake-up for a cancelled waiter ignored")
        return
    log.error("event loop: %s", context.get("message", "unhandled error"), exc_info=exc)
