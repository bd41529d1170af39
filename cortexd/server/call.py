"""What a handler sees of one request: its params, its peer and its stream."""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

_UCRED = struct.Struct("3i")


@dataclass(slots=True)
class Peer:
    """The credentials of the process at the other end (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    _groups: frozenset[int] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, gid = _UCRED.unpack(raw)
        return cls(pid=pid, uid=uid, gid=gid)

    def groups(self) -> frozenset[int]:
        """The peer's supplementary groups, read once from /proc.

        SO_PEERCRED carries only the primary gid; /proc/PID/status has the
        rest. If the process is gone already we fall back to the primary gid,
        which can only deny, never grant, more than the peer had.
        """
        if self._groups is None:
            found = {self.gid}
            try:
                with open(f"/proc/{self.pid}/status", encoding="ascii") as fh:
                    for line in fh:
                        if line.startswith("Groups:"):
                            found.update(int(g) for g in line.split()[1:])
                            break
            except (OSError, ValueError):
                pass
            self._groups = frozenset(found)
        return self._groups

    def in_group(self, gid: int | None) -> bool:
        return gid is not None and gid in self.groups()


StreamSender = Callable[[Any], Awaitable[None]]


@dataclass(slots=True)
class Call:
    """One request being handled.

    `stream(data)` sends a `stream` notification for this request (numbered
    from 0) before the final answer; `request_id` is the server-side id, made
    on first use.
    """

    method: str
    params: dict[str, Any]
    peer: Peer
    id: Any
    is_admin: bool
    _sender: StreamSender | None = None
    _request_id: str | None = None
    _seq: int = 0

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id = uuid.uuid4().hex[:16]
        return self._request_id

    async def stream(self, data: Any) -> None:
        """Send one stream notification before the final answer.

        If the client stopped reading or went away, its connection is closed
        and this request is cancelled (the caller sees cancellation).
        """
        if self._sender is None:
            return
        seq = self._seq
        self._seq += 1
        await self._sender({"id": self.id, "seq": seq, "data": data})
