"""The state directory itself: the one storage fault the daemon does not start without.

A single database that cannot be opened costs its feature; a state
directory that cannot be created or written costs every feature at once, so
the daemon refuses to start and says why (exit status 1).
"""

from __future__ import annotations

import os

from cortexd.protocol import CortexError, ErrorCode
from cortexd.store.errors import READ_ONLY, os_reason


class StateDirUnusable(CortexError):
    """The state directory cannot be created, is not a directory, or cannot be written."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"state directory {path} is unusable: {reason}", path=path, reason=reason)


def ensure_state_dir(path: str) -> None:
    """Create `path` (mode 0750) if missing and check the daemon can write in it.

    Blocking. Raises StateDirUnusable.
    """
    if os.path.lexists(path) and not os.path.isdir(path):
        raise StateDirUnusable(path, "not a directory")
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise StateDirUnusable(path, os_reason(exc)) from None
    if not os.access(path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        try:
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        raise StateDirUnusable(path, READ_ONLY if read_only else "permission denied")
