"""Load, merge and validate configuration from its layers.

Precedence, lowest first: built-in defaults < /etc/cortex/daemon.conf <
~/.cortex/daemon.conf < CORTEXD_SECTION__KEY environment < command-line
overrides. `--config PATH` replaces both file layers with one file.

Every value remembers where it came from (file and line, environment
variable, command line), so validation — which runs once on the merged
result and collects every problem before failing — can name the source, the
key and what is wrong.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from cortexd.config import seed
from cortexd.config.coerce import EnvText, Origins, build_config, kind_of, origin_of
from cortexd.config.schema import RESERVED_SECTIONS, Config
from cortexd.protocol import ConfigError

SYSTEM_CONFIG = "/etc/cortex/daemon.conf"
USER_CONFIG = os.path.join(".cortex", "daemon.conf")  # under $HOME
ENV_PREFIX = "CORTEXD_"
ENV_SEPARATOR = "__"
# Names under the prefix that are not config keys.
ENV_RESERVED = frozenset({"CORTEXD_CONFIG"})
MAX_CONFIG_BYTES = 1 << 20

# The original daemon's flat keys, kept so existing daemon.conf files load.
FLAT_ALIASES: dict[str, tuple[str, str]] = {
    "socket_path": ("server", "socket_path"),
    "model_path": ("inference", "model_path"),
    "n_threads": ("inference", "n_threads"),
    "n_ctx": ("inference", "n_ctx"),
    "use_mmap": ("inference", "use_mmap"),
    "monitoring_interval_seconds": ("monitor", "interval_seconds"),
    "enable_cve_scanning": ("monitor", "enable_cve_scanning"),
    "enable_journald_logging": ("logging", "target"),
    "log_level": ("logging", "level"),
}
# The original daemon numbered its levels: 0 DEBUG … 3 ERROR.
SEED_LOG_LEVELS = {0: "DEBUG", 1: "INFO", 2: "WARN", 3: "ERROR"}

Layer = dict[str, Any]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config with where it came from and what was worth a warning."""

    config: Config
    sources: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConfigFiles:
    """Which files feed the config: one explicit file, or the system and user files.

    The system path is a parameter (not read from the module constant at load
    time) so tests and packagers can point it elsewhere.
    """

    explicit: str | None = None
    system: str = SYSTEM_CONFIG
    user: str | None = None

    def paths(self, environ: Mapping[str, str]) -> list[str]:
        if self.explicit:
            return [self.explicit]
        return [self.system, self.user or user_config_path(environ)]


def user_config_path(environ: Mapping[str, str]) -> str:
    """~/.cortex/daemon.conf, with HOME taken from `environ`."""
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, USER_CONFIG)


@dataclass(slots=True)
class _Merged:
    data: Layer = field(default_factory=dict)
    origins: Origins = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_config(
    explicit_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    files: ConfigFiles | None = None,
) -> LoadedConfig:
    """Read every layer, merge and validate.

    `explicit_path` is `--config PATH`; `files` overrides which files are read
    (it wins over `explicit_path` when both are given); `environ` defaults to
    the process environment.

    Raises:
        ConfigError: with one message per problem, each naming the source,
            the key and the problem.
    """
    env = os.environ if environ is None else environ
    files = files or ConfigFiles(explicit=explicit_path)
    merged = _Merged()
    for path in files.paths(env):
        _load_file(merged, path, required=files.explicit is not None)
    _load_env(merged, env)
    if overrides:
        merged.sources.append("command line")
        _add_layer(merged, dict(overrides), "command line", {})
    config = build_config(merged.data, merged.origins, merged.errors, merged.warnings)
    _warn_unknown_top_level(merged)
    if merged.errors:
        raise ConfigError(merged.errors)
    return LoadedConfig(
        config=config, sources=tuple(merged.sources), warnings=tuple(merged.warnings)
    )


def _load_file(merged: _Merged, path: str, *, required: bool) -> None:
    text = _read_text(path, required=required, errors=merged.errors, warnings=merged.warnings)
    if text is None:
        return
    merged.sources.append(path)
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text)) if data else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        merged.errors.append(f"{path}: invalid YAML{where}: {problem}")
        return
    if data is None:
        return  # an empty file, or only comments
    if not isinstance(data, dict):
        merged.errors.append(
            f"{path}: the top level must be a mapping of sections, not {kind_of(data)}"
        )
        return
    _add_layer(merged, data, path, lines)


def _read_text(path: str, *, required: bool, errors: list[str], warnings: list[str]) -> str | None:
    try:
        with open(path, "rb") as fh:
            _warn_if_writable_by_others(path, os.fstat(fh.fileno()), warnings)
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if required:
            errors.append(f"{path}: file not found")
        return None
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    if len(raw) > MAX_CONFIG_BYTES:
        errors.append(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.append(f"{path}: not UTF-8 text (byte {exc.start})")
        return None


def _warn_if_writable_by_others(path: str, st: os.stat_result, warnings: list[str]) -> None:
    """Whoever can write the config of a root daemon controls it: say so."""
    if os.getuid() != 0:
        return
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        warnings.append(
            f"{path}: writable by someone other than root (owner uid {st.st_uid}, "
            f"mode {stat.S_IMODE(st.st_mode):04o}); anyone who can write it controls the daemon"
        )


def _key_lines(node: yaml.Node | None, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """The 1-based line of every mapping key, by its path in the document."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    return lines


def _load_env(merged: _Merged, env: Mapping[str, str]) -> None:
    """One layer per CORTEXD_ variable, so a problem names the variable."""
    names = sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in ENV_RESERVED)
    if names:
        merged.sources.append("environment")
    for name in names:
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_SEPARATOR)
        source = f"environment variable {name}"
        if not all(parts):
            merged.errors.append(f"{source}: expected CORTEXD_SECTION__KEY")
            continue
        layer: Layer = {}
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = EnvText(env[name])
        _add_layer(merged, layer, source, {})


def _add_layer(
    merged: _Merged, layer: Layer, source: str, lines: dict[tuple[str, ...], int]
) -> None:
    layer, lines = seed.translate(layer, lines, source, merged.warnings, merged.errors)
    normal, origins = _normalise(layer, source, lines, merged.errors)
    _merge(merged.data, normal)
    merged.origins.update(origins)


def _normalise(
    layer: Layer, source: str, lines: dict[tuple[str, ...], int], errors: list[str]
) -> tuple[Layer, Origins]:
    """Map the original daemon's flat keys to their sections and note where each key came from."""
    out: Layer = {}
    origins: Origins = {}

    def where(path: tuple[str, ...]) -> str:
        line = lines.get(path)
        return f"{source}:{line}" if line else source

    for raw_key, value in layer.items():
        key = str(raw_key)
        if key in FLAT_ALIASES:
            section, name = FLAT_ALIASES[key]
            origin = where((key,))
            translated = _translate_alias(key, value, origin, errors)
            if not isinstance(out.get(section), dict):
                out[section] = {}
            out[section][name] = translated
            origins[(section, name)] = origin
            continue
        out[key] = _merge_copy(out.get(key), value)
        _note_origins(value, (key,), (key,), where, origins)
    return out, origins


def _note_origins(
    value: Any,
    source_path: tuple[str, ...],
    path: tuple[str, ...],
    where: Any,
    origins: Origins,
) -> None:
    origins[path] = where(source_path)
    if isinstance(value, dict):
        for sub, sub_value in value.items():
            _note_origins(sub_value, (*source_path, str(sub)), (*path, str(sub)), where, origins)


def _translate_alias(key: str, value: Any, origin: str, errors: list[str]) -> Any:
    if isinstance(value, EnvText) and key in ("log_level", "enable_journald_logging"):
        value = value.parsed()
    if key == "log_level" and isinstance(value, int) and not isinstance(value, bool):
        if value not in SEED_LOG_LEVELS:
            errors.append(f"{origin}: log_level: must be 0-3, got {value}")
            return "INFO"
        return SEED_LOG_LEVELS[value]
    if key == "enable_journald_logging":
        if isinstance(value, bool):
            return "journal" if value else "stderr"
        errors.append(
            f"{origin}: enable_journald_logging: expected true or false, "
            f"got {kind_of(value)} {value!r}"
        )
        return "auto"
    return value


def _merge_copy(existing: Any, value: Any) -> Any:
    if isinstance(value, dict):
        into = dict(existing) if isinstance(existing, dict) else {}
        _merge(into, value)
        return into
    return value


def _merge(into: Layer, layer: Layer) -> None:
    """Deep-merge `layer` over `into`: mappings merge key by key, anything else replaces."""
    for key, value in layer.items():
        into[key] = _merge_copy(into.get(key), value)


def _warn_unknown_top_level(merged: _Merged) -> None:
    known = {f.name for f in fields(Config)} | RESERVED_SECTIONS
    for key in merged.data:
        if key not in known:
            origin = origin_of(merged.origins, (key,))
            merged.warnings.append(f"{origin}: {key}: unknown key, ignored")
