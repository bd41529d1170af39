"""What a feature may use of the daemon that runs it: a narrow, typed view of the root.

`cortexd.app.Daemon` is the one implementation. Features annotate with
`Runtime` and never import `cortexd.app`, so the composition root stays on
top of the import graph: it imports the features, they import only this.
What one feature needs from another does not come through here either: the
root passes it as a typed `install` argument (cortexd/features.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from anyio.abc import SocketStream, TaskGroup
from anyio.streams.stapled import MultiListener

from cortexd.config import Config
from cortexd.server import Authorizer, Registry, ServerStats
from cortexd.summaries import SummaryBoard


class Component(Protocol):
    """A long-running part of the daemon that the root starts, reloads and stops."""

    name: str

    def state(self) -> dict[str, Any]:
        """A small JSON-ready summary for `status` (at least `state`).

        `status` serves it from `Runtime.summaries`: read again when the
        component calls `summaries.publish(name)`, or once it is older than
        the component's optional `state_max_age` attribute (seconds,
        `DEFAULT_MAX_AGE` when absent; None: only when published).
        """

    async def start(self, tg: TaskGroup) -> None:
        """Start background work in `tg`; return once the component serves."""

    def apply_config(self, config: Config) -> None:
        """Take a reloaded config (only settings that can change live)."""

    async def stop(self) -> None:
        """Finish or cancel work and persist state; bounded by the caller's deadline."""


class Runtime(Protocol):
    """The daemon as its features see it while they install and while they run."""

    @property
    def config(self) -> Config:
        """The running configuration; a reload replaces it (read it at use, never keep it)."""

    @property
    def started_wall(self) -> float:
        """When the daemon started (wall clock, `time.time()`)."""

    @property
    def registry(self) -> Registry:
        """Where a feature adds its socket methods at install."""

    @property
    def components(self) -> list[Component]:
        """Where a feature adds its components at install: started in order, stopped in reverse."""

    @property
    def stats(self) -> ServerStats:
        """The server's request and connection counters."""

    @property
    def authorizer(self) -> Authorizer:
        """Who may call what: the rule a feature applies to what it shows, as the server does."""

    @property
    def socket_path(self) -> str:
        """The path clients connect to."""

    @property
    def stopping(self) -> bool:
        """True once a shutdown has been requested."""

    @property
    def summaries(self) -> SummaryBoard:
        """The components' summaries `status` serves; `publish(name)` after a change."""

    def state_changes(self) -> int:
        """Requests answered so far of methods that may change state (`Method.changes_state`)."""

    def serving(self) -> bool:
        """Whether the socket accepts requests now (bound, not shutting down)."""

    def take_http_listener(self) -> MultiListener[SocketStream] | None:
        """The metrics HTTP port bound before READY=1, once; None when not bound."""

    async def wait_stopping(self) -> None:
        """Return once a shutdown has been requested."""

    async def reload(self, request_id: str | None = None) -> dict[str, Any]:
        """Re-read the configuration, as `config.reload` does (ConfigError if it is bad)."""
