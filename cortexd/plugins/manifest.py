"""A plugin's `plugin.yaml`, the trust rules for its files, and its version range.

Notifier plugins may name the action type they add (`action_type`, default:
the plugin's name) and the options a rule's action of that type takes
(`action_options: {key: required|optional}`; without it any options pass).

Trust: a root daemon runs plugin code as root, so as root a plugin loads
only when its directory and every file in it are owned by root and not
writable by group or others; the error names the first offending file. The
plugins directory itself and each directory above it are held to the same
rule (`check_directory_trust`), or no plugin loads at all.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from cortexd import __version__

PluginType = Literal["check", "notifier", "command"]
PLUGIN_TYPES: tuple[PluginType, ...] = ("check", "notifier", "command")
MANIFEST = "plugin.yaml"
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<|~=)?\s*(\d+(?:\.\d+)*)\s*$")
MAX_MANIFEST_BYTES = 64 * 1024


class PluginError(Exception):
    """A plugin cannot load; the message says why (naming the file when it is one)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """The fields of plugin.yaml (the original daemon's, plus check settings)."""

    name: str
    version: str
    description: str
    author: str
    plugin_type: PluginType
    main: str
    cortex_version: str
    directory: str
    settings: dict[str, Any] = field(default_factory=dict)
    interval_seconds: float = 60.0
    action_type: str = ""
    # Option key -> required; None when the plugin accepts any options.
    action_options: dict[str, bool] | None = None

    @property
    def main_path(self) -> str:
        return os.path.join(self.directory, self.main)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "author": self.author,
            "plugin_type": self.plugin_type,
            "main": self.main,
            "cortex_version": self.cortex_version,
            "directory": self.directory,
        }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def version_ok(spec: str, version: str = __version__) -> bool:
    """Whether `version` satisfies `spec` (">=0.1.0,<1.0"; ~= means same major.minor series).

    Raises:
        PluginError: the spec cannot be read.
    """
    have = _version(version)
    for clause in (c for c in spec.split(",") if c.strip()):
        found = _CLAUSE.match(clause)
        if not found:
            raise PluginError(f"cortex_version: cannot read {clause.strip()!r}")
        op, want_text = found.group(1) or "==", found.group(2)
        want = _version(want_text)
        width = max(len(have), len(want))
        a = have + (0,) * (width - len(have))
        b = want + (0,) * (width - len(want))
        ok = {
            ">=": a >= b,
            "<=": a <= b,
            "==": a == b,
            "!=": a != b,
            ">": a > b,
            "<": a < b,
            "~=": a >= b and a[: len(want) - 1] == b[: len(want) - 1],
        }[op]
        if not ok:
            return False
    return True


def check_trust(directory: str, euid: int) -> None:
    """As root, refuse a plugin whose files another user could have written.

    Raises:
        PluginError: naming the first file with a foreign owner or group/world write.
    """
    if euid != 0:
        return
    for base, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for path in (base, *(os.path.join(base, f) for f in files)):
            st = os.lstat(path)
            if st.st_uid != 0:
                raise PluginError(f"{path} is owned by uid {st.st_uid}, not root; not loaded")
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(st.st_mode):
                raise PluginError(
                    f"{path} is writable by group or others (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}); not loaded"
                )


def check_directory_trust(directory: str, euid: int) -> None:
    """As root, refuse a plugins directory that someone else could change.

    The directory and every directory above it must be owned by root and not
    writable by group or others — whoever can rename or replace any of them
    can put their own code where root loads plugins. A parent writable by
    all but sticky (/tmp) passes: nobody else can replace root's entries in
    it. The path is checked as written and as resolved (symbolic links).

    Raises:
        PluginError: naming the first offending directory and why.
    """
    if euid != 0:
        return
    absolute = os.path.abspath(directory)
    for path in dict.fromkeys((absolute, os.path.realpath(absolute))):
        current = path
        while True:
            _check_directory(current, own=current == path)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent


def _check_directory(path: str, *, own: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # a missing plugins directory holds no plugins
    what = "the plugins directory" if own else "a parent of the plugins directory"
    if st.st_uid != 0:
        raise PluginError(f"{what} {path} is owned by uid {st.st_uid}, not root; no plugin loaded")
    if stat.S_ISLNK(st.st_mode):
        return  # root's link: its target is checked as the resolved path
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and (own or not st.st_mode & stat.S_ISVTX):
        raise PluginError(
            f"{what} {path} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); no plugin loaded"
        )


def _text(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str | int | float) or value is True or value is False:
        raise PluginError(f"{MANIFEST}: `{key}` must be a string")
    return str(value)


def load_manifest(directory: str) -> Manifest:
    """Read and validate `<directory>/plugin.yaml`.

    Raises:
        PluginError: missing or malformed manifest, unknown type, bad name, a main
            outside the plugin directory, or a cortex_version this daemon does not meet.
    """
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise PluginError(f"{path}: {exc.strerror}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PluginError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise PluginError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PluginError(f"{path}: expected a mapping")
    name = _text(data, "name", os.path.basename(directory))
    if not NAME.match(name):
        raise PluginError(f"{path}: name {name!r} must be lower-case letters, digits, - or _")
    plugin_type = _text(data, "plugin_type")
    if plugin_type not in PLUGIN_TYPES:
        raise PluginError(f"{path}: plugin_type must be one of {', '.join(PLUGIN_TYPES)}")
    main = _text(data, "main", "__init__.py")
    main_path = os.path.realpath(os.path.join(directory, main))
    if not main_path.startswith(os.path.realpath(directory) + os.sep):
        raise PluginError(f"{path}: main {main!r} is outside the plugin directory")
    if not os.path.isfile(main_path):
        raise PluginError(f"{path}: main {main!r} does not exist")
    spec = _text(data, "cortex_version", ">=0.1.0")
    if not version_ok(spec):
        raise PluginError(f"needs cortex {spec}; this is {__version__}")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise PluginError(f"{path}: `settings` must be a mapping")
    interval = data.get("interval_seconds", 60.0)
    if not isinstance(interval, int | float) or isinstance(interval, bool) or interval < 1:
        raise PluginError(f"{path}: `interval_seconds` must be a number of at least 1")
    action_type, action_options = _notifier_fields(data, path, name, plugin_type)
    return Manifest(
        name=name,
        version=_text(data, "version", "0.0.0"),
        description=_text(data, "description", ""),
        author=_text(data, "author", ""),
        plugin_type=plugin_type,
        main=main,
        cortex_version=spec,
        directory=directory,
        settings=settings,
        interval_seconds=float(interval),
        action_type=action_type,
        action_options=action_options,
    )


def _notifier_fields(
    data: dict[str, Any], path: str, name: str, plugin_type: str
) -> tuple[str, dict[str, bool] | None]:
    if plugin_type != "notifier":
        return "", None
    action_type = _text(data, "action_type", name)
    if not NAME.match(action_type):
        raise PluginError(
            f"{path}: action_type {action_type!r} must be lower-case letters, digits, - or _"
        )
    raw = data.get("action_options")
    if raw is None:
        return action_type, None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and v in ("required", "optional") for k, v in raw.items()
    ):
        raise PluginError(f"{path}: `action_options` must map option names to required|optional")
    return action_type, {k: v == "required" for k, v in raw.items()}
