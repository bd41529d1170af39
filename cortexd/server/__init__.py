"""The socket server: transport, framing, dispatch, authorization."""

from __future__ import annotations

from cortexd.server.call import Call, Peer
from cortexd.server.core import Authorizer, Server
from cortexd.server.registry import Method, Param, Registry
from cortexd.server.stats import ServerStats
from cortexd.server.transport import (
    BoundSocket,
    bind_socket,
    bind_tcp,
    raise_fd_limit,
    remove_socket,
)

__all__ = [
    "Authorizer",
    "BoundSocket",
    "Call",
    "Method",
    "Param",
    "Peer",
    "Registry",
    "Server",
    "ServerStats",
    "bind_socket",
    "bind_tcp",
    "raise_fd_limit",
    "remove_socket",
]
