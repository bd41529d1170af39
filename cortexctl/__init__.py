"""Client library and command-line tool for cortexd.

`Client` (blocking) and `AsyncClient` (asyncio) speak the daemon's JSON-RPC
socket protocol; daemon errors surface as `cortexd.protocol` exceptions.
`AsyncClient` is imported lazily so the CLI does not pay for asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cortexctl.client import Client, DaemonUnreachable, UntrustedSocket

if TYPE_CHECKING:
    from cortexctl.aio import AsyncClient

__all__ = ["AsyncClient", "Client", "DaemonUnreachable", "UntrustedSocket"]


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from cortexctl.aio import AsyncClient

        return AsyncClient
    raise AttributeError(name)
