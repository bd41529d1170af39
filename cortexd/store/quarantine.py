"""Moving a damaged database aside, and finding what was moved aside before.

A database that cannot be opened or fails its check at start is renamed to
`NAME.db.corrupt-<UTC timestamp>` together with its `-wal`, `-shm` and
`-journal` files (as `NAME.db.corrupt-<stamp>-wal`, and so on, so SQLite
finds the log beside the file if someone opens the copy to look inside), and
a fresh database takes its place. Nothing is deleted: the files stay in the
state directory until an operator restores a backup or removes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass

SIDE_FILES = ("-wal", "-shm", "-journal")
_STAMP = "%Y%m%dT%H%M%SZ"
QUARANTINED = re.compile(r"^(?P<name>.+\.db)\.corrupt-(?P<stamp>\d{8}T\d{6}Z)(?:\.\d+)?$")


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A database moved aside: where it was, where it went, why and when."""

    original: str
    moved_to: str
    reason: str
    at: float

    def to_dict(self) -> dict[str, object]:
        return {
            "original": self.original,
            "moved_to": self.moved_to,
            "reason": self.reason,
            "at": self.at,
        }


def preserve_side_files(path: str) -> dict[str, str]:
    """Hard-link the `-wal` and `-journal` of `path` to hidden names before SQLite opens it.

    Closing a connection to a file SQLite found damaged may delete its log;
    the link keeps the bytes for `move_aside`. Returns {suffix: link};
    `release` removes the links once the file opened fine. Blocking.
    """
    kept = {}
    for suffix in ("-wal", "-journal"):
        link = _kept_name(path, suffix)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)  # left by a crash during an earlier open
        try:
            os.link(path + suffix, link)
        except OSError:
            continue  # no such file, or links refused: nothing to keep
        kept[suffix] = link
    return kept


def release(kept: dict[str, str]) -> None:
    """Remove the links `preserve_side_files` made."""
    for link in kept.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


def move_aside(
    path: str, reason: str, kept: dict[str, str] | None = None, now: float | None = None
) -> Quarantined:
    """Rename `path` and its side files to a free `.corrupt-<stamp>` name.

    A side file in `kept` (see `preserve_side_files`) moves from its link,
    as it was before SQLite opened the file. Blocking. Raises OSError when
    a rename fails (the directory is read-only).
    """
    kept = kept or {}
    at = time.time() if now is None else now
    base = f"{path}.corrupt-{time.strftime(_STAMP, time.gmtime(at))}"
    target, n = base, 0
    while any(os.path.lexists(target + s) for s in ("", *SIDE_FILES)):
        n += 1
        target = f"{base}.{n}"
    # Side files first: a crash half-way leaves the main file where it was,
    # and the next start moves it again.
    for suffix in SIDE_FILES:
        if suffix in kept:
            os.rename(kept[suffix], target + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)  # must not be replayed into the fresh file
        elif os.path.lexists(path + suffix):
            os.rename(path + suffix, target + suffix)
    os.rename(path, target)
    _sync_directory(os.path.dirname(path) or ".")
    return Quarantined(original=path, moved_to=target, reason=reason, at=at)


def _kept_name(path: str, suffix: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{suffix}.before-open")


def find_quarantined(directory: str) -> list[tuple[str, str]]:
    """(database name, quarantined file name) for each database moved aside in `directory`."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        match = QUARANTINED.match(name)
        if match and os.path.isfile(os.path.join(directory, name)):
            found.append((match["name"], name))
    return found


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
