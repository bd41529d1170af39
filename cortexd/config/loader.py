"""Load, merge and validate configuration from its layers.

Precedence, lowest first: built-in defaults < /etc/cortex/daemon.conf <
~/.cortex/daemon.conf < CORTEXD_SECTION__KEY environment < command-line
overrides. `--config PATH` replaces both file layers with one file.
Validation collects every problem before failing, each message naming the
source, the key and what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from cortexd.config.schema import RESERVED_SECTIONS, SECTIONS, Config
from cortexd.protocol import ConfigError

SYSTEM_CONFIG = "/etc/cortex/daemon.conf"
USER_CONFIG = "~/.cortex/daemon.conf"
ENV_PREFIX = "CORTEXD_"
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
_SEED_LOG_LEVELS = {0: "DEBUG", 1: "INFO", 2: "WARN", 3: "ERROR"}
_LEVEL_SYNONYMS = {"WARNING": "WARN", "ERR": "ERROR", "CRITICAL": "ERROR"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}

Layer = dict[str, Any]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config with where it came from and what was worth a warning."""

    config: Config
    sources: tuple[str, ...]
    warnings: tuple[str, ...]


def load_config(
    explicit_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Read every layer, merge and validate.

    Raises:
        ConfigError: with one message per problem (file, key, problem).
    """
    env = os.environ if environ is None else environ
    errors: list[str] = []
    warnings: list[str] = []
    sources: list[str] = []
    merged: Layer = {}

    paths = [explicit_path] if explicit_path else [SYSTEM_CONFIG, os.path.expanduser(USER_CONFIG)]
    for path in paths:
        layer = _read_file(path, required=explicit_path is not None, errors=errors)
        if layer is None:
            continue
        sources.append(path)
        _merge(merged, _normalise(layer, path, errors, warnings))
    env_layer = _env_layer(env, errors)
    if env_layer:
        sources.append("environment")
        _merge(merged, _normalise(env_layer, "environment", errors, warnings))
    if overrides:
        sources.append("command line")
        _merge(merged, _normalise(dict(overrides), "command line", errors, warnings))

    config = build_config(merged, errors)
    if errors:
        raise ConfigError(errors)
    return LoadedConfig(config=config, sources=tuple(sources), warnings=tuple(warnings))


def _read_file(path: str, *, required: bool, errors: list[str]) -> Layer | None:
    try:
        with open(path, "rb") as fh:
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
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        errors.append(f"{path}: not UTF-8 text")
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(f"{path}: invalid YAML{where}: {problem}")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.append(f"{path}: top level must be a mapping of sections, not {_kind(data)}")
        return None
    return data


def _env_layer(env: Mapping[str, str], errors: list[str]) -> Layer:
    layer: Layer = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == "CORTEXD_CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if len(path) == 1:
            layer[path[0]] = value
        elif len(path) == 2:
            layer.setdefault(path[0], {})[path[1]] = value
        else:
            errors.append(f"environment: {name}: expected CORTEXD_SECTION__KEY")
    return layer


def _normalise(layer: Layer, source: str, errors: list[str], warnings: list[str]) -> Layer:
    """Map flat seed keys to sections and report unknown keys."""
    out: Layer = {}
    for key, value in layer.items():
        key = str(key)
        if key in FLAT_ALIASES:
            section, name = FLAT_ALIASES[key]
            value = _translate_alias(key, value, source, errors)
            out.setdefault(section, {})[name] = value
        elif key == "state_dir":
            out[key] = value
        elif key in SECTIONS:
            if not isinstance(value, dict):
                errors.append(f"{source}: {key}: must be a mapping, not {_kind(value)}")
                continue
            known = {f.name for f in fields(SECTIONS[key])}
            section_out = out.setdefault(key, {})
            for sub, sub_value in value.items():
                if sub not in known:
                    warnings.append(f"{source}: {key}.{sub}: unknown key, ignored")
                    continue
                section_out[sub] = sub_value
        elif key in RESERVED_SECTIONS:
            out[key] = value
        else:
            warnings.append(f"{source}: {key}: unknown key, ignored")
    return out


def _translate_alias(key: str, value: Any, source: str, errors: list[str]) -> Any:
    if key == "log_level" and isinstance(value, int) and not isinstance(value, bool):
        if value not in _SEED_LOG_LEVELS:
            errors.append(f"{source}: log_level: must be 0-3, got {value}")
            return "INFO"
        return _SEED_LOG_LEVELS[value]
    if key == "enable_journald_logging":
        if isinstance(value, bool):
            return "journal" if value else "stderr"
        errors.append(f"{source}: enable_journald_logging: expected true or false, got {value!r}")
        return "auto"
    return value


def _merge(into: Layer, layer: Layer) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = dict(value) if isinstance(value, dict) else value


def build_config(merged: Layer, errors: list[str]) -> Config:
    """Validate a merged layer into a `Config`; problems are appended to `errors`."""
    base = Config()
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    if "state_dir" in merged:
        value = _coerce(merged["state_dir"], hints["state_dir"], "state_dir", errors)
        if value is not None:
            kwargs["state_dir"] = os.path.expanduser(value)
    for name, cls in SECTIONS.items():
        given = merged.get(name, {})
        kwargs[name] = _build_section(cls, given, name, getattr(base, name), errors)
    return dataclasses.replace(base, **kwargs)


def _build_section(
    cls: type[Any], given: Layer, section: str, default: Any, errors: list[str]
) -> Any:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in given:
            continue
        key = f"{section}.{f.name}"
        value = _coerce(given[f.name], hints[f.name], key, errors)
        if value is None:
            continue
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if lo is not None and value < lo:
                errors.append(f"{key}: must be at least {lo:g}, got {value:g}")
                continue
            if hi is not None and value > hi:
                errors.append(f"{key}: must be at most {hi:g}, got {value:g}")
                continue
        values[f.name] = value
    return dataclasses.replace(default, **values)


def _coerce(value: Any, hint: Any, key: str, errors: list[str]) -> Any:
    """Return `value` as type `hint`, or None after recording why it cannot be."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        text = str(value).upper() if isinstance(value, str) else value
        if isinstance(text, str) and all(c.isupper() for c in choices if isinstance(c, str)):
            text = _LEVEL_SYNONYMS.get(text, text)
        elif isinstance(value, str):
            text = value.lower()
        if text in choices:
            return text
        errors.append(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return None
    if origin in (Union, types.UnionType):
        return _coerce(value, next(a for a in get_args(hint) if a is not type(None)), key, errors)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        errors.append(f"{key}: expected true or false, got {_kind(value)} {value!r}")
        return None
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        errors.append(f"{key}: expected an integer, got {_kind(value)} {value!r}")
        return None
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        errors.append(f"{key}: expected a number, got {_kind(value)} {value!r}")
        return None
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        errors.append(f"{key}: expected a string, got {_kind(value)} {value!r}")
        return None
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a schema bug, not input


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
