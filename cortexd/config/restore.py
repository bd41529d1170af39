"""Putting configuration files back: the one function restore and update rollback share.

An archive or a snapshot names where each of its configuration files came
from. That name is data from the archive, so it decides nothing by itself:

- **where** — the file is written only if its origin is, exactly, one of the
  files the daemon reads its configuration from now (`ConfigTarget`s: the
  config files it loaded, the notification rules file). The origin must be an
  absolute, normalised path (no `.` or `..` component, no doubled slash), no
  component of it may be a symbolic link, and its directory must already
  exist: restore never creates directories. There is no prefix match.
- **how** — the file is written with a fixed mode (0644, or 0600 when it holds
  secrets) and, when the daemon is root, owner root; a mode or owner recorded
  in the archive is never used, so no setuid, setgid or sticky bit can come
  from one. The bytes go to a new file in the same directory (`O_EXCL`,
  `O_NOFOLLOW`), are synced, and replace the target with a rename.
- **what** — a caller other than root (or the daemon's own user) may not change
  a root-only key: what root executes, loads or reads, and who may connect or
  administer. Such a restore is refused with PERMISSION_DENIED naming the
  keys, before anything is written. A daemon.conf that does not validate is
  refused too (CONFIG_ERROR).

`plan_config_restore` checks everything and keeps the bytes it checked;
`write_config_files` writes exactly those. Callers plan before they change
anything else (the databases), so a refusal leaves everything as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from cortexd.config.loader import MAX_CONFIG_BYTES, ConfigFiles, load_config
from cortexd.config.rootonly import changed_keys, root_only_values
from cortexd.config.view import is_secret_key
from cortexd.protocol import ConfigError, PermissionDenied

PUBLIC_MODE = 0o644
SECRET_MODE = 0o600
# A parsed document -> {root-only key: value} for the keys it sets.
RootOnlyOf = Callable[[Any], dict[str, Any]]
# A staged candidate's path -> None, or raise ConfigError.
Validate = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ConfigTarget:
    """A file the daemon reads its configuration from, and how to judge a new version.

    `always_secret` files (the notification rules) are written 0600 whatever
    they hold; others are 0600 only when a secret-looking key has a value.
    """

    path: str
    root_only_of: RootOnlyOf
    always_secret: bool = False
    validate: Validate | None = None


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A config file from an archive or snapshot: where it says it came from, and its copy."""

    origin: Any
    staged: str


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    target: ConfigTarget
    data: bytes
    mode: int


@dataclass(slots=True)
class ConfigRestorePlan:
    """What a config restore will write, and what it leaves out and why."""

    writes: list[PlannedWrite] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


class PathRefused(Exception):
    """An origin that is not a path restore may write; the message says why."""


class RootOnlyChange(PermissionDenied):
    """A caller other than root asked for a restore that changes root-only keys."""

    def __init__(self, keys: list[str]) -> None:
        shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
        super().__init__(
            f"only root may change {shown}: the restore would change what root executes, "
            "loads or reads (nothing was written)",
            keys=keys,
        )


def is_root_or_owner(uid: int) -> bool:
    """Root, or the user a per-user daemon runs as (it executes nothing they could not)."""
    return uid in (0, os.geteuid())


def daemon_conf_target(path: str) -> ConfigTarget:
    """A daemon.conf layer: judged by the schema's root-only keys, validated by the loader."""
    return ConfigTarget(os.path.abspath(path), root_only_values, validate=_validate_daemon_conf)


def config_targets(
    sources: Iterable[str], extra: Iterable[ConfigTarget] = ()
) -> list[ConfigTarget]:
    """The targets of a running daemon: the config files it loaded, then `extra`.

    `sources` is `LoadedConfig.sources`, where non-file layers ("environment",
    "command line") are not paths and are left out.
    """
    found: dict[str, ConfigTarget] = {}
    for source in sources:
        if os.path.isabs(source):
            target = daemon_conf_target(source)
            found.setdefault(target.path, target)
    for target in extra:
        path = os.path.abspath(target.path)
        found.setdefault(path, dataclasses.replace(target, path=path))
    return list(found.values())


def allowed_target(origin: Any, targets: Sequence[ConfigTarget]) -> ConfigTarget:
    """The target `origin` names, if restore may write there.

    Raises:
        PathRefused: the origin is not an absolute normalised path, is not
            exactly one of `targets`, passes through a symbolic link, is not
            a regular file, or its directory does not exist.
    """
    if not isinstance(origin, str) or not origin or "\0" in origin:
        raise PathRefused("not a path")
    if not os.path.isabs(origin):
        raise PathRefused("not an absolute path")
    parts = origin.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts) or os.path.normpath(origin) != origin:
        raise PathRefused("not a normalised path (a '.', '..' or empty component)")
    target = next((t for t in targets if t.path == origin), None)
    if target is None:
        raise PathRefused("not one of the files the daemon reads its configuration from")
    if os.path.realpath(origin) != origin:
        raise PathRefused("a component of the path is a symbolic link")
    parent = os.path.dirname(origin)
    try:
        parent_st = os.lstat(parent)
    except FileNotFoundError:
        raise PathRefused("its directory does not exist (restore never creates one)") from None
    if not stat.S_ISDIR(parent_st.st_mode):
        raise PathRefused("its directory does not exist (restore never creates one)")
    if os.geteuid() == 0 and (
        parent_st.st_uid != 0
        or (
            parent_st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            and not parent_st.st_mode & stat.S_ISVTX
        )
    ):
        raise PathRefused("its directory is not root's alone (owner or write permission)")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(origin).st_mode):
            raise PathRefused("it exists and is not a regular file")
    return target


def plan_config_restore(
    files: Iterable[StagedFile], targets: Sequence[ConfigTarget], *, privileged: bool
) -> ConfigRestorePlan:
    """Decide what to write; blocking (reads the staged and the current files).

    `privileged` is true for root (and a per-user daemon's own user): only
    they may change root-only keys. Files whose origin is not an allowed
    target are left out and listed in `skipped` with the reason.

    Raises:
        RootOnlyChange: not `privileged`, and a file would change root-only keys.
        ConfigError: a daemon.conf candidate does not validate, or a staged
            file cannot be read or is too large.
    """
    plan = ConfigRestorePlan()
    changed: list[str] = []
    errors: list[str] = []
    seen: set[str] = set()
    for item in files:
        try:
            target = allowed_target(item.origin, targets)
        except PathRefused as why:
            plan.skipped.append({"origin": str(item.origin), "reason": str(why)})
            continue
        if target.path in seen:
            plan.skipped.append({"origin": target.path, "reason": "given twice; the first is used"})
            continue
        seen.add(target.path)
        data = _read_limited(item.staged, target.path, errors)
        if data is None:
            continue
        if target.validate is not None:
            try:
                target.validate(item.staged)
            except ConfigError as exc:
                errors.extend(e.replace(item.staged, target.path) for e in exc.errors)
                continue
        candidate = _parse(data)
        if not privileged:
            current = _current(target.path)
            changed.extend(
                _prefixed(target, k)
                for k in changed_keys(target.root_only_of(current), target.root_only_of(candidate))
            )
        plan.writes.append(PlannedWrite(target, data, _mode(target, candidate)))
    if changed:
        raise RootOnlyChange(changed)
    if errors:
        raise ConfigError(errors)
    return plan


def write_config_files(plan: ConfigRestorePlan) -> list[str]:
    """Write what `plan` holds; returns the paths written. Blocking.

    Each file is checked against the path rule again just before it is
    written, in case the filesystem changed since the plan.

    Raises:
        OSError: a write failed (the files written before it stay written).
    """
    written = []
    for item in plan.writes:
        try:
            allowed_target(item.target.path, [item.target])
        except PathRefused as why:
            raise OSError(f"{item.target.path}: no longer writable: {why}") from None
        _write(item.target.path, item.data, item.mode)
        written.append(item.target.path)
    return written


def _prefixed(target: ConfigTarget, key: str) -> str:
    # daemon.conf keys are the schema's own names; other files' keys say which file.
    return key if target.validate is _validate_daemon_conf else f"{target.path}: {key}"


def _read_limited(path: str, target: str, errors: list[str]) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        errors.append(f"{target}: cannot read the archived copy: {exc.strerror or exc}")
        return None
    if len(data) > MAX_CONFIG_BYTES:
        errors.append(f"{target}: the archived copy is larger than {MAX_CONFIG_BYTES} bytes")
        return None
    return data


def _parse(data: bytes) -> Any:
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError:
        return None


def _current(path: str) -> Any:
    """The target's present contents, parsed; None when missing or unreadable."""
    data = _read_limited(path, path, [])
    return None if data is None else _parse(data)


def _mode(target: ConfigTarget, document: Any) -> int:
    return SECRET_MODE if target.always_secret or _holds_secret(document) else PUBLIC_MODE


def _holds_secret(value: Any, key: str = "") -> bool:
    if isinstance(value, dict):
        return any(_holds_secret(v, str(k)) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_secret(v, key) for v in value)
    return bool(key) and is_secret_key(key) and value not in (None, "", False)


def _validate_daemon_conf(staged: str) -> None:
    load_config(files=ConfigFiles(explicit=staged), environ={})


def _write(target: str, data: bytes, mode: int) -> None:
    parent, name = os.path.split(target)
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # Through the directory's descriptor: a directory swapped for a link
        # after the check cannot redirect the write.
        tmp = f".{name}.restore-{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, SECRET_MODE, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(data)
                fh.flush()
            os.fchmod(fd, mode)
            if os.geteuid() == 0:
                os.fchown(fd, 0, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
