"""Restore uploads: one archive at a time arriving in chunks, and who may touch it.

One upload at a time (a restore replaces the whole state, two at once make
no sense). An upload belongs to the uid that began it: only that uid or root
may send chunks, commit or abort it. So that an abandoned upload cannot
block every later restore:

- an upload idle for `backup.upload_idle_seconds` (10 minutes) is dropped —
  checked on every `restore.begin` as well as by the housekeeping round, so
  the limit holds to the second;
- its owner or root may drop it at once with `restore.abort`;
- root's `restore.begin` takes over an upload idle for a tenth of that (a
  minute): a client sending chunks is never that quiet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable

from cortexd.protocol import Busy, NotFound, PermissionDenied

log = logging.getLogger(__name__)

# Root's begin takes over an upload idle for this part of the idle limit.
TAKEOVER_FRACTION = 0.1


class Upload:
    """An archive arriving in chunks over the socket, written under the state dir."""

    def __init__(self, path: str, size: int, uid: int, sha256: str, now: float) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.path = path
        self.size = size
        self.uid = uid
        self.sha256 = sha256
        self.received = 0
        self.touched = now


class Uploads:
    """The upload in progress (at most one), with ownership and expiry."""

    def __init__(self, clock: Callable[[], float], idle_limit: Callable[[], float]) -> None:
        self.clock = clock
        self.idle_limit = idle_limit
        self._current: dict[str, Upload] = {}

    def __len__(self) -> int:
        return len(self._current)

    def begin(self, path: str, size: int, uid: int, sha256: str) -> Upload:
        """Start an upload into the (new, empty) file `path`.

        Raises:
            Busy: another upload is in progress (naming its owner, how long it
                has been idle and how to end it).
        """
        self.expire()
        for other in list(self._current.values()):
            idle = self.clock() - other.touched
            if uid == 0 and idle >= self.idle_limit() * TAKEOVER_FRACTION:
                log.warning(
                    "root takes over restore upload %s of uid %d (idle %.0f s)",
                    other.id,
                    other.uid,
                    idle,
                )
                self.drop(other)
                continue
            raise Busy(
                f"another restore upload is in progress (uid {other.uid}, idle {idle:.0f} s); "
                f"it is dropped after {self.idle_limit():g} s idle, or now by "
                "`restore.abort` from its owner or root",
                upload_id=other.id,
                uid=other.uid,
                idle_seconds=round(idle, 1),
            )
        upload = Upload(path, size, uid, sha256, self.clock())
        self._current[upload.id] = upload
        return upload

    def get(self, upload_id: str, uid: int) -> Upload:
        """The upload, for its owner or root; marks it active.

        Raises:
            NotFound: no such upload (never begun, committed, aborted or expired).
            PermissionDenied: another user's upload.
        """
        upload = self._current.get(upload_id)
        if upload is None:
            raise NotFound(f"no upload {upload_id!r}", id=upload_id)
        if upload.uid != uid and uid != 0:
            raise PermissionDenied("this upload belongs to another user", owner_uid=upload.uid)
        upload.touched = self.clock()
        return upload

    def abort(self, upload_id: str, uid: int) -> Upload:
        """Drop an upload now (its owner or root). Raises as `get`."""
        upload = self.get(upload_id, uid)
        self.drop(upload)
        log.info("restore upload %s of uid %d aborted by uid %d", upload.id, upload.uid, uid)
        return upload

    def expire(self) -> int:
        """Drop uploads idle past the limit; returns how many."""
        limit = self.idle_limit()
        now = self.clock()
        stale = [u for u in self._current.values() if now - u.touched > limit]
        for upload in stale:
            log.info(
                "restore upload %s of uid %d expired after %g s idle", upload.id, upload.uid, limit
            )
            self.drop(upload)
        return len(stale)

    def drop(self, upload: Upload) -> None:
        self._current.pop(upload.id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upload.path)

    def drop_all(self) -> None:
        for upload in list(self._current.values()):
            self.drop(upload)
