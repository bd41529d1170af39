"""The original tool's sectioned keys: read as the keys that do their job here, with a note.

The original `config.yaml` has keys cortexd names differently or covers
another way. A file written for it loads: each such key becomes what gives
the behaviour it asked for, and the load notes how it was read (a warning:
logged at start and on reload, shown by `config.get` and `--check-config`).

- `doctor.auto_fix_safe`: `repair.auto_fix_safe`;
- `doctor.parallel_checks`: `false` is `doctor.max_parallel: 1`; `true`, up
  to `doctor.max_parallel` at once;
- `updates.auto_check`: `false` turns the `apt_updates` and
  `security_updates` checks off;
- `updates.channel`: a channel name (`stable`) names no manifest, so no
  release channel is used;
- `plugins.auto_load`: `false` is `plugins.enabled: false`;
- `plugins.trusted_sources`: not used, plugins are trusted by ownership.

`doctor.auto_fix_safe` yields to `repair.auto_fix_safe` set in the same
layer; a `false` of the others wins over the keys it sets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cortexd.config.coerce import EnvText, kind_of

Layer = dict[str, Any]
Lines = dict[tuple[str, ...], int]
Note = Callable[[str], None]

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}
UPDATE_CHECKS = ("apt_updates", "security_updates")


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, EnvText):
        value = value.parsed()
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    return None


class _Layer:
    """One layer being translated: its data, the lines of its keys, and where it came from."""

    def __init__(
        self, data: Layer, lines: Lines, source: str, notes: list[str], errors: list[str]
    ) -> None:
        self.data = data
        self.lines = lines
        self.source = source
        self.notes = notes
        self.errors = errors

    def where(self, path: tuple[str, ...]) -> str:
        line = self.lines.get(path)
        return f"{self.source}:{line}" if line else self.source

    def section(self, name: str) -> dict[str, Any] | None:
        found = self.data.get(name)
        return found if isinstance(found, dict) else None

    def take(self, section: str, key: str) -> tuple[bool, Any]:
        """Remove `section.key` from the layer; (whether it was there, its value)."""
        found = self.section(section)
        if found is None or key not in found:
            return False, None
        copy = dict(found)
        value = copy.pop(key)
        self.data[section] = copy
        return True, value

    def has(self, *path: str) -> bool:
        node: Any = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def put(self, alias: tuple[str, ...], path: tuple[str, ...], value: Any) -> None:
        """Set `path` to `value`, remembered as written on the alias's line."""
        node = self.data
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[path[-1]] = value
        if alias in self.lines:
            self.lines[path] = self.lines[alias]

    def note(self, alias: tuple[str, ...], text: str) -> None:
        self.notes.append(f"{self.where(alias)}: {'.'.join(alias)}: {text}")

    def boolean(self, alias: tuple[str, ...], value: Any) -> bool | None:
        found = _as_bool(value)
        if found is None:
            self.errors.append(
                f"{self.where(alias)}: {'.'.join(alias)}: expected true or false, "
                f"got {kind_of(value)} {value!r}"
            )
        return found


def translate(
    data: Layer, lines: Lines, source: str, notes: list[str], errors: list[str]
) -> tuple[Layer, Lines]:
    """`data` with the original tool's keys read as cortexd's; notes and errors appended."""
    layer = _Layer(dict(data), dict(lines), source, notes, errors)
    _auto_fix_safe(layer)
    _parallel_checks(layer)
    _auto_check(layer)
    _channel(layer)
    _auto_load(layer)
    _trusted_sources(layer)
    return layer.data, layer.lines


def _auto_fix_safe(layer: _Layer) -> None:
    alias = ("doctor", "auto_fix_safe")
    found, value = layer.take(*alias)
    if not found:
        return
    if layer.has("repair", "auto_fix_safe"):
        layer.note(alias, "ignored: repair.auto_fix_safe, its name here, is set too")
        return
    layer.put(alias, ("repair", "auto_fix_safe"), value)
    shown = str(value).lower() if isinstance(value, bool) else value
    layer.note(alias, f"read as repair.auto_fix_safe: {shown}")


def _parallel_checks(layer: _Layer) -> None:
    alias = ("doctor", "parallel_checks")
    found, value = layer.take(*alias)
    if not found or (parallel := layer.boolean(alias, value)) is None:
        return
    if parallel:
        layer.note(alias, "checks run in parallel, at most doctor.max_parallel at once")
    else:
        layer.put(alias, ("doctor", "max_parallel"), 1)
        layer.note(alias, "false: read as doctor.max_parallel: 1 (one check at a time)")


def _auto_check(layer: _Layer) -> None:
    alias = ("updates", "auto_check")
    found, value = layer.take(*alias)
    if not found or (automatic := layer.boolean(alias, value)) is None:
        return
    checks = " and ".join(f"checks.{c}" for c in UPDATE_CHECKS)
    if automatic:
        layer.note(alias, f"pending updates are checked by {checks} (hourly)")
        return
    for check in UPDATE_CHECKS:
        layer.put(alias, ("checks", check, "enabled"), False)
    layer.note(alias, f"false: read as {checks}.enabled: false")


def _channel(layer: _Layer) -> None:
    section = layer.section("updates")
    value = section.get("channel") if section else None
    if isinstance(value, EnvText):
        value = str(value)
    if not isinstance(value, str) or not value or "://" in value or value.startswith("/"):
        return  # a manifest location (or nothing): updates.channel's own validation
    alias = ("updates", "channel")
    layer.take(*alias)
    layer.note(
        alias,
        f"{value!r} is a channel name of the original tool, not a release manifest;"
        " no release channel is used (name the manifest: file:///path or https://host/path)",
    )


def _auto_load(layer: _Layer) -> None:
    alias = ("plugins", "auto_load")
    found, value = layer.take(*alias)
    if not found or (automatic := layer.boolean(alias, value)) is None:
        return
    if automatic:
        layer.note(alias, "plugins load at start when plugins.enabled is true")
    else:
        layer.put(alias, ("plugins", "enabled"), False)
        layer.note(alias, "false: read as plugins.enabled: false")


def _trusted_sources(layer: _Layer) -> None:
    alias = ("plugins", "trusted_sources")
    found, _ = layer.take(*alias)
    if found:
        layer.note(
            alias,
            "not used: plugins load only from plugins.directory, and as root only when"
            " root owns them and no one else can write them",
        )
