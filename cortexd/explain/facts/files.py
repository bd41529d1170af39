"""Permission facts: the paths the Cortex tree checks found, with mode and owner.

The checks list the offending paths; this looks at each again (lstat, no
symlink followed) so the explanation shows the mode and owner as they are
now, and the owner by name.
"""

from __future__ import annotations

import os
import pwd
import stat

from cortexd.explain.facts.model import Context, Found, Gatherer

MAX_PATHS = 5
# Modes that give everything to everyone: set in one go, not by a umask.
WIDE_OPEN = frozenset({0o777, 0o666})


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def cortex_paths(ctx: Context, found: Found) -> None:
    details = ctx.check.item(ctx.labels) if ctx.check is not None else {}
    paths = details.get("paths") if isinstance(details, dict) else None
    if not isinstance(paths, list) or not paths:
        found.note("the check's last run listed no paths")
        return
    for path in paths[:MAX_PATHS]:
        try:
            st = os.lstat(str(path))
        except OSError:
            found.note(f"{path} is gone")
            continue
        mode = stat.S_IMODE(st.st_mode)
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        foreign = st.st_uid not in (ctx.host.owner, 0)
        found.add(
            "path.mode",
            str(path),
            f"{path} is a {kind} with mode {mode:04o}, owned by {_owner(st.st_uid)}",
            f"lstat({path})",
            mode=f"{mode:04o}",
            wide_open=mode in WIDE_OPEN,
            world_writable=bool(mode & stat.S_IWOTH),
            group_writable=bool(mode & stat.S_IWGRP),
            foreign_owner=foreign,
            uid=st.st_uid,
        )
    if len(paths) > MAX_PATHS:
        found.note(f"{len(paths) - MAX_PATHS} more paths were found; see `cortexctl doctor -v`")


GATHERERS = (
    Gatherer(
        "cortex_paths",
        cortex_paths,
        {
            "path.mode": frozenset(
                {"mode", "wide_open", "world_writable", "group_writable", "foreign_owner", "uid"}
            )
        },
        description="mode and owner of the Cortex paths a check found",
    ),
)
