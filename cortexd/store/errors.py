"""What goes wrong under a database, named for the condition.

SQLite reports a full disk as SQLITE_FULL, but a filesystem that turned
read-only, or a full one hit while a file grows, as SQLITE_IOERR or
SQLITE_READONLY with no errno. The filesystem itself says which: `statvfs`
on the database's directory tells a read-only mount, no free blocks and no
free inodes apart, so the error names the condition and the mountpoint an
operator has to look at.
"""

from __future__ import annotations

import errno
import os
import sqlite3

from cortexd.protocol import Busy, CortexError, Unavailable

# SQLite's primary result codes (the low byte of an extended code).
SQLITE_PERM = 3
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

READ_ONLY = "read-only file system"
NO_SPACE = "no space left on device"
NO_INODES = "no free inodes"
LOCKED = "locked by another process"
PROBE_NAME = ".cortex-write-probe"

_FILESYSTEM_CODES = frozenset(
    {SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN}
)
_DAMAGE_CODES = frozenset({SQLITE_CORRUPT, SQLITE_NOTADB})


class StorageUnavailable(Unavailable):
    """A database call failed because of its filesystem (full, read-only, failing).

    Nothing was changed by the call. Reads usually still work; writes work
    again once the filesystem has room or is writable again.
    """

    def __init__(self, database: str, reason: str, filesystem: str) -> None:
        super().__init__(
            f"storage unavailable: {reason} on {filesystem} ({database}); nothing was changed",
            reason=reason,
            filesystem=filesystem,
            database=database,
        )
        self.reason = reason


class StoreFailed(Unavailable):
    """A database could not be opened or created; its feature stays off until a restart."""

    def __init__(self, database: str, reason: str) -> None:
        super().__init__(f"{database} is unavailable: {reason}", reason=reason, database=database)
        self.reason = reason


class DatabaseLocked(Busy):
    """Another process holds a lock on the database past the busy timeout."""

    def __init__(self, database: str) -> None:
        super().__init__(f"{database} is {LOCKED}", reason=LOCKED, database=database)
        self.reason = LOCKED


class Damaged(Exception):
    """The file is not a database this build can use: it is moved aside at open."""


def primary_code(exc: sqlite3.Error) -> int:
    """The primary result code of an SQLite error (0 when it carries none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else 0


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether the error says the file's content is not a (sound) database."""
    return primary_code(exc) in _DAMAGE_CODES


def mountpoint(path: str) -> str:
    """The mountpoint of the filesystem holding `path` (or its nearest existing parent)."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def filesystem_problem(directory: str) -> str | None:
    """What the filesystem of `directory` says is wrong: read-only, full, no inodes, or None.

    Blocking; creates and removes one empty file in `directory`.
    """
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    if st.f_flag & os.ST_RDONLY:
        return READ_ONLY
    # A filesystem shut down after an error (ext4's emergency read-only) can
    # still say "rw" in statvfs; creating a file says what it really is.
    probe = os.path.join(directory, PROBE_NAME)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.ENOSPC):
            return os_reason(exc)
    # Asked only after a call failed. Root may still write into the blocks
    # reserved for it, but ext4 keeps some from everyone: no blocks available
    # to users is the best sign of "full" there is.
    if st.f_bavail == 0:
        return NO_SPACE
    if st.f_files and st.f_favail == 0:
        return NO_INODES
    return None


def translate(exc: sqlite3.Error, path: str) -> CortexError | None:
    """The condition-named error for an SQLite failure, or None when it is not one.

    Blocking (statvfs): call it on the database's own thread. Errors that say
    nothing about storage (a constraint, a bug in a query) give None and are
    raised as they are.
    """
    name = os.path.basename(path)
    code = primary_code(exc)
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return DatabaseLocked(name)
    if code not in _FILESYSTEM_CODES and code not in _DAMAGE_CODES:
        return None
    directory = os.path.dirname(path) or "."
    problem = filesystem_problem(directory)
    if code == SQLITE_FULL and problem is None:
        problem = NO_SPACE
    return StorageUnavailable(name, problem or str(exc), mountpoint(directory))


def os_reason(exc: OSError) -> str:
    """An OSError as the words an operator knows (`read-only file system`)."""
    if exc.errno == errno.EROFS:
        return READ_ONLY
    if exc.errno == errno.ENOSPC:
        return NO_SPACE
    return os.strerror(exc.errno) if exc.errno else str(exc)
