"""The plugins directory in backups and restores: which files, and where they may go back.

Plugin code is code root runs, so a restore holds plugin files to the rules
the plugin loader holds them to, and to the path rules of configuration
files (`cortexd.config.restore`):

- **which** — a plugin is a directory directly under the plugins directory
  whose name does not start with `.` or `_` (the loader ignores those). A
  backup keeps a plugin whole or not at all: every regular file in it, except
  `__pycache__`, each at most `MAX_PLUGIN_FILE_BYTES`, with plain names
  (`NAME`) at most `MAX_DEPTH` deep. A plugin holding a symbolic link, a
  special file or a name a restore would refuse is left out, and the backup
  says so, rather than kept in a form that would not load the same.
- **where** — a file goes back only below the plugins directory the daemon
  loads from now, inside a plugin's own directory; the path is absolute and
  normalised, made of plain names, and no component of it is a symbolic
  link. The plugins directory must exist (it is never created) and, for a
  root daemon, it and every directory above it must be root's alone (owner
  root, not writable by group or others; a sticky parent such as /tmp
  passes), as must every existing directory below it on the way. Missing
  directories below it (a deleted plugin's) are created 0755, owner root:
  the only directories a restore ever creates.
- **how** — files are written 0644, or 0755 when the archived file was
  executable by its owner, owner root: no other bit of an archived mode is
  used, and nothing is left writable by group or others.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# One path component below the plugins directory: no leading dot (hidden
# files, `.`, `..`), no slash, nothing a shell or a log would mangle.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+~-]{0,127}$")
SKIPPED_DIRS = frozenset({"__pycache__"})
# Components below the plugins directory: the plugin's own and six levels of packages.
MAX_DEPTH = 8
# The archive's limit for one configuration member (`backup.archive`).
MAX_PLUGIN_FILE_BYTES = 4 << 20
FILE_MODE = 0o644
EXEC_MODE = 0o755
DIR_MODE = 0o755

Reload = Callable[[], Awaitable[object]]
# A read-only mount (a service's ProtectSystem=strict) or, for a daemon that
# is not root, a directory it may not write: said before anything is written,
# rather than failing halfway through a restore.
NOT_WRITABLE = (
    "its directory is not writable by the daemon (read-only here: a service unit's "
    "ReadWritePaths= must name it)"
)


@dataclass(frozen=True, slots=True)
class PluginTree:
    """The plugins directory the daemon loads from, and how to load it again.

    `reload` is None when plugins are disabled: restored files then wait for
    the next `plugins.reload`.
    """

    directory: str
    reload: Reload | None = field(default=None, compare=False)


@dataclass(slots=True)
class PluginFiles:
    """What a backup keeps of the plugins directory, and what it leaves out and why."""

    files: list[str] = field(default_factory=list)
    left_out: list[dict[str, str]] = field(default_factory=list)


def parts_below(tree: PluginTree, path: str) -> list[str] | None:
    """The components of `path` below the plugins directory; None when it is not below it."""
    prefix = tree.directory.rstrip("/") + "/"
    return path[len(prefix) :].split("/") if path.startswith(prefix) else None


def file_mode(archived: Any) -> int:
    """The mode a restored plugin file gets: only the owner's execute bit is taken."""
    executable = isinstance(archived, int) and not isinstance(archived, bool) and archived & 0o100
    return EXEC_MODE if executable else FILE_MODE


def plugin_files(directory: str, room: int) -> PluginFiles:
    """The files of each plugin under `directory`, whole plugins only, at most `room` files.

    Blocking. A missing or unreadable directory holds no plugins.
    """
    found = PluginFiles()
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return found
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith((".", "_")) or not _is_real_dir(path):
            continue
        try:
            files, problem = _one_plugin(path, name)
        except OSError as exc:
            files, problem = [], f"cannot be read: {exc.strerror or exc}"
        if problem is None and len(found.files) + len(files) > room:
            problem = f"a backup holds at most {room} more configuration files"
        if problem is not None:
            found.left_out.append({"path": path, "reason": problem})
            continue
        found.files.extend(files)
    return found


def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _one_plugin(path: str, name: str) -> tuple[list[str], str | None]:
    if not NAME.match(name):
        return [], f"its name {name!r} is not one a restore would write"
    files: list[str] = []
    for base, dirs, names in os.walk(path, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        depth = len(os.path.relpath(base, os.path.dirname(path)).split(os.sep))
        for entry in [*dirs, *sorted(names)]:
            full = os.path.join(base, entry)
            if not NAME.match(entry):
                return [], f"{full}: a name a restore would not write"
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                return [], f"{full} is a symbolic link"
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                return [], f"{full} is not a regular file"
            if depth + 1 > MAX_DEPTH:
                return [], f"{full} is more than {MAX_DEPTH} levels below the plugins directory"
            if st.st_size > MAX_PLUGIN_FILE_BYTES:
                return [], f"{full} is larger than {MAX_PLUGIN_FILE_BYTES} bytes"
            files.append(full)
    return files, None


def _raise(error: OSError) -> None:
    raise error


def path_problem(origin: str, tree: PluginTree) -> str | None:
    """Why a restore may not write `origin` as a file of `tree`, or None when it may.

    `origin` is already known to be an absolute normalised path. Blocking
    (looks at the filesystem).
    """
    parts = parts_below(tree, origin)
    if parts is None:
        return "not below the plugins directory"
    if len(parts) < 2:
        return "not inside a plugin's directory (plugins are directories)"
    if len(parts) > MAX_DEPTH:
        return f"more than {MAX_DEPTH} levels below the plugins directory"
    if parts[0].startswith("_") or any(not NAME.match(p) or p in SKIPPED_DIRS for p in parts):
        return "not a name a restore writes in the plugins directory"
    if os.path.realpath(origin) != origin:
        return "a component of the path is a symbolic link"
    try:
        st = os.lstat(tree.directory)
    except FileNotFoundError:
        return "the plugins directory does not exist (restore never creates it)"
    if not stat.S_ISDIR(st.st_mode):
        return "the plugins directory is not a directory"
    if os.geteuid() == 0:
        problem = _chain_problem(tree.directory)
        if problem is not None:
            return problem
    below = deepest = tree.directory
    for part in parts[:-1]:
        below = os.path.join(below, part)
        try:
            st = os.lstat(below)
        except FileNotFoundError:
            break  # created by the restore, and everything below it too
        if not stat.S_ISDIR(st.st_mode):
            return f"{below} is not a directory"
        if os.geteuid() == 0 and not _root_alone(st, own=True):
            return f"{below} is not root's alone (owner or write permission)"
        deepest = below
    if not os.access(deepest, os.W_OK):
        return NOT_WRITABLE
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(origin).st_mode):
            return "it exists and is not a regular file"
    return None


def _chain_problem(directory: str) -> str | None:
    """The loader's rule: the plugins directory and every directory above it root's alone."""
    current = directory
    while True:
        st = os.lstat(current)
        if not _root_alone(st, own=current == directory):
            what = "the plugins directory" if current == directory else "a parent of it"
            return f"{what} {current} is not root's alone (owner or write permission)"
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _root_alone(st: os.stat_result, *, own: bool) -> bool:
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return st.st_uid == 0 and not (writable and (own or not st.st_mode & stat.S_ISVTX))


def open_parent(tree: PluginTree, origin: str) -> int:
    """A descriptor of `origin`'s directory, creating the missing ones below the plugins
    directory (0755, owner root). Blocking; the caller closes the descriptor.

    Each step opens the next directory relative to the last with O_NOFOLLOW,
    so a directory swapped for a link after `path_problem` cannot redirect it.

    Raises:
        OSError: a directory on the way is a link, not a directory, or not
            root's alone (for a root daemon), or cannot be created.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tree.directory, flags)
    try:
        for part in (parts_below(tree, origin) or [""])[:-1]:
            created = False
            try:
                os.mkdir(part, DIR_MODE, dir_fd=fd)
                created = True
            except FileExistsError:
                pass
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
            if created:
                os.fchmod(fd, DIR_MODE)  # whatever the umask took away
                if os.geteuid() == 0:
                    os.fchown(fd, 0, 0)
            elif os.geteuid() == 0 and not _root_alone(os.fstat(fd), own=True):
                raise OSError(f"{part}: not root's alone")
    except BaseException:
        os.close(fd)
        raise
    return fd


def unchanged(origin: str, data: bytes, mode: int) -> bool:
    """Whether the file at `origin` already holds `data` with `mode` (and, for a root
    daemon, owner root): writing it would change nothing. Blocking."""
    try:
        fd = os.open(origin, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            return False
        if os.geteuid() == 0 and st.st_uid != 0:
            return False
        return fh.read(len(data) + 1) == data
