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
  keys, before anything is written. A daemon.conf or rules file that does not
  validate is refused too (CONFIG_ERROR).
- **plugins** — files of the plugins directory (`PluginTree`) go back by the
  rules in `cortexd.config.plugintree`: only below the directory the daemon
  loads plugins from now, never through a link, with the loader's ownership
  rules. Plugin code is what root runs, so for a caller other than root any
  plugin file the restore would add or change refuses it whole, like a
  root-only key (`data.plugin_files`); files already as archived are left
  alone, and a restore never deletes a file.

`plan_config_restore` checks everything and keeps the bytes it checked;
`write_config_files` writes exactly those, and `reload_restored` makes them
take effect. Callers plan before they change anything else (the databases),
so a refusal leaves everything as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from cortexd.config import plugintree
from cortexd.config.loader import MAX_CONFIG_BYTES, ConfigFiles, load_config
from cortexd.config.plugintree import PluginTree
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


# What a restore may write: configuration files, and the files of the plugins directory.
Target = ConfigTarget | PluginTree


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A config file from an archive or snapshot: where it says it came from, its copy,
    and the mode it had (data too: only a plugin file's owner-execute bit is used)."""

    origin: Any
    staged: str
    mode: Any = None


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    path: str
    target: Target
    data: bytes
    mode: int


@dataclass(slots=True)
class ConfigRestorePlan:
    """What a config restore will write, and what it leaves out and why."""

    writes: list[PlannedWrite] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def plugins(self, written: Iterable[str] | None = None) -> list[str]:
        """The names of the plugins it writes files of (of those `written`, if given)."""
        only = None if written is None else set(written)
        return sorted(
            {
                (plugintree.parts_below(w.target, w.path) or [""])[0]
                for w in self.writes
                if isinstance(w.target, PluginTree) and (only is None or w.path in only)
            }
        )


class PathRefused(Exception):
    """An origin that is not a path restore may write; the message says why."""


class RootOnlyChange(PermissionDenied):
    """A caller other than root asked for a restore that changes root-only keys or plugins."""

    def __init__(self, keys: list[str], plugin_files: Sequence[str] = ()) -> None:
        named = []
        if keys:
            named.append(_shown(keys))
        if plugin_files:
            named.append(f"the plugin files {_shown(plugin_files)}")
        super().__init__(
            f"only root may change {' and '.join(named)}: the restore would change what root "
            "executes, loads or reads (nothing was written)",
            keys=keys,
            plugin_files=list(plugin_files),
        )


def _shown(items: Sequence[str], most: int = 20) -> str:
    extra = len(items) - most
    return ", ".join(items[:most]) + (f" and {extra} more" if extra > 0 else "")


def daemon_conf_target(path: str) -> ConfigTarget:
    """A daemon.conf layer: judged by the schema's root-only keys, validated by the loader."""
    return ConfigTarget(os.path.abspath(path), root_only_values, validate=_validate_daemon_conf)


def config_targets(
    sources: Iterable[str], extra: Iterable[ConfigTarget] = (), plugins: PluginTree | None = None
) -> list[Target]:
    """The targets of a running daemon: the config files it loaded, then `extra`, then
    the plugins directory.

    `sources` is `LoadedConfig.sources`, where non-file layers ("environment",
    "command line") are not paths and are left out.
    """
    found: dict[str, Target] = {}
    for source in sources:
        if os.path.isabs(source):
            target = daemon_conf_target(source)
            found.setdefault(target.path, target)
    for target in extra:
        path = os.path.abspath(target.path)
        found.setdefault(path, dataclasses.replace(target, path=path))
    targets = list(found.values())
    if plugins is not None:
        targets.append(dataclasses.replace(plugins, directory=os.path.abspath(plugins.directory)))
    return targets


def staged_files(entries: Iterable[Mapping[str, Any]], root: str) -> list[StagedFile]:
    """The configuration members of a manifest's or snapshot's file list, staged under `root`."""
    return [
        StagedFile(e.get("origin"), os.path.join(root, e["name"]), e.get("mode"))
        for e in entries
        if str(e.get("name", "")).startswith("config/")
    ]


def allowed_target(origin: Any, targets: Sequence[Target]) -> Target:
    """The target `origin` names, if restore may write there.

    Raises:
        PathRefused: the origin is not an absolute normalised path, is not
            exactly one of the configuration files nor a file a restore may
            write below the plugins directory (`plugintree.path_problem`),
            passes through a symbolic link, is not a regular file, or its
            directory does not exist.
    """
    if not isinstance(origin, str) or not origin or "\0" in origin:
        raise PathRefused("not a path")
    if not os.path.isabs(origin):
        raise PathRefused("not an absolute path")
    parts = origin.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts) or os.path.normpath(origin) != origin:
        raise PathRefused("not a normalised path (a '.', '..' or empty component)")
    target = next((t for t in targets if isinstance(t, ConfigTarget) and t.path == origin), None)
    if target is None:
        tree = next(
            (
                t
                for t in targets
                if isinstance(t, PluginTree) and plugintree.parts_below(t, origin) is not None
            ),
            None,
        )
        if tree is None:
            raise PathRefused("not one of the files the daemon reads its configuration from")
        problem = plugintree.path_problem(origin, tree)
        if problem is not None:
            raise PathRefused(f"a plugin file restore may not write: {problem}")
        return tree
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
    if not os.access(parent, os.W_OK):
        raise PathRefused(plugintree.NOT_WRITABLE)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(origin).st_mode):
            raise PathRefused("it exists and is not a regular file")
    return target


def plan_config_restore(
    files: Iterable[StagedFile], targets: Sequence[Target], *, privileged: bool
) -> ConfigRestorePlan:
    """Decide what to write; blocking (reads the staged and the current files).

    `privileged` is true for root (and a per-user daemon's own user): only
    they may change root-only keys and plugin files. Files whose origin is
    not an allowed target are left out and listed in `skipped` with the
    reason; plugin files already as archived are left out silently.

    Raises:
        RootOnlyChange: not `privileged`, and a file would change root-only
            keys, or a plugin file would be added or changed.
        ConfigError: a daemon.conf or rules candidate does not validate, or a
            staged file cannot be read or is too large.
    """
    plan = ConfigRestorePlan()
    changed: list[str] = []
    plugin_files: list[str] = []
    errors: list[str] = []
    seen: set[str] = set()
    for item in files:
        try:
            target = allowed_target(item.origin, targets)
        except PathRefused as why:
            plan.skipped.append({"origin": str(item.origin), "reason": str(why)})
            continue
        path: str = item.origin
        if path in seen:
            plan.skipped.append({"origin": path, "reason": "given twice; the first is used"})
            continue
        seen.add(path)
        if isinstance(target, PluginTree):
            data = _read_limited(item.staged, path, errors, plugintree.MAX_PLUGIN_FILE_BYTES)
            mode = plugintree.file_mode(item.mode)
            if data is None or plugintree.unchanged(path, data, mode):
                continue
            if not privileged:
                plugin_files.append(path)
            plan.writes.append(PlannedWrite(path, target, data, mode))
            continue
        data = _read_limited(item.staged, path, errors)
        if data is None:
            continue
        if target.validate is not None:
            try:
                target.validate(item.staged)
            except ConfigError as exc:
                errors.extend(e.replace(item.staged, path) for e in exc.errors)
                continue
        candidate = _parse(data)
        if not privileged:
            current = _current(path)
            changed.extend(
                _prefixed(target, k)
                for k in changed_keys(target.root_only_of(current), target.root_only_of(candidate))
            )
        plan.writes.append(PlannedWrite(path, target, data, _mode(target, candidate)))
    if changed or plugin_files:
        raise RootOnlyChange(changed, plugin_files)
    if errors:
        raise ConfigError(errors)
    return plan


def write_config_files(plan: ConfigRestorePlan) -> list[str]:
    """Write what `plan` holds; returns the paths written. Blocking.

    Each file is checked against the path rule again just before it is
    written, in case the filesystem changed since the plan; the
    configuration files go first, then the plugin files.

    Raises:
        OSError: a write failed (the files written before it stay written).
    """
    written = []
    ordered = sorted(plan.writes, key=lambda w: isinstance(w.target, PluginTree))
    for item in ordered:
        try:
            allowed_target(item.path, [item.target])
        except PathRefused as why:
            raise OSError(f"{item.path}: no longer writable: {why}") from None
        if isinstance(item.target, PluginTree):
            dir_fd = plugintree.open_parent(item.target, item.path)
        else:
            dir_fd = _open_dir(os.path.dirname(item.path))
        try:
            _write_at(dir_fd, os.path.basename(item.path), item.data, item.mode)
        finally:
            os.close(dir_fd)
        written.append(item.path)
    return written


async def reload_restored(
    plan: ConfigRestorePlan,
    written: Sequence[str],
    reload_config: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any] | None:
    """Make what `write_config_files` wrote take effect; the configuration reload's
    answer, or None when no configuration file was written.

    The plugins are loaded again first, so that rules naming an action type a
    restored plugin adds find it when the configuration reload re-reads them.

    Raises:
        ConfigError: the configuration reload refused the files (the running
            configuration is kept).
    """
    done = set(written)
    reloads: list[plugintree.Reload] = []
    for item in plan.writes:
        if isinstance(item.target, PluginTree) and item.path in done:
            reload = item.target.reload
            if reload is not None and reload not in reloads:
                reloads.append(reload)
    for reload in reloads:
        await reload()
    if any(isinstance(w.target, ConfigTarget) and w.path in done for w in plan.writes):
        return await reload_config()
    return None


def _prefixed(target: ConfigTarget, key: str) -> str:
    # daemon.conf keys are the schema's own names; other files' keys say which file.
    return key if target.validate is _validate_daemon_conf else f"{target.path}: {key}"


def _read_limited(
    path: str, target: str, errors: list[str], limit: int = MAX_CONFIG_BYTES
) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        errors.append(f"{target}: cannot read the archived copy: {exc.strerror or exc}")
        return None
    if len(data) > limit:
        errors.append(f"{target}: the archived copy is larger than {limit} bytes")
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


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _write_at(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """Replace `name` in the directory `dir_fd` with `data`, owner root when root.

    Through the directory's descriptor: a directory swapped for a link after
    the check cannot redirect the write.
    """
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
