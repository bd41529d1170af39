"""Client library and command-line tool for cortexd.

`Client` (blocking) and `AsyncClient` (asyncio) speak the daemon's JSON-RPC
socket protocol; daemon errors surface as `cortexd.protocol` exceptions.
`AsyncClient` is imported lazily so the CLI does not pay for asyncio.
"""

from __future__ import annotations

from cortexctl.client import Client, DaemonUnreachable, UntrustedSocket

# `typing` is not imported at run time: it costs the CLI's start-up more
# than the client itself (see docs/performance.md).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from cortexctl.aio import AsyncClient

__all__ = ["AsyncClient", "Client", "DaemonUnreachable", "UntrustedSocket"]


def __getattr__(name: str) -> object:
    if name == "AsyncClient":
        from cortexctl.aio import AsyncClient

        return AsyncClient
    raise AttributeError(name)
