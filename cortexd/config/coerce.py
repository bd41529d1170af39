"""Turn merged config data into the typed, frozen `Config`, collecting every problem.

Works from the dataclasses' own type hints and field metadata (`min`, `max`),
so a section added to the schema is validated with no table to update here.
Supported field types: bool, int, float, str, `Literal[...]`, `X | None`,
`list[X]`, `tuple[X, ...]`, `dict[str, X]`, `Any` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from cortexd.config.schema import Config

Origins = dict[tuple[str, ...], str]
DEFAULTS_SOURCE = "defaults"

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
# Spellings people use for levels; applied only when the value is not itself a choice.
_SYNONYMS = {"WARNING": "WARN", "ERR": "ERROR", "CRITICAL": "ERROR"}


class EnvText(str):
    """A value from an environment variable: text that may stand for a number,
    a boolean or a list. It is interpreted by the type of the key it sets, so
    `CORTEXD_SERVER__SOCKET_GROUP=123` stays the string "123" while
    `CORTEXD_SERVER__REQUEST_TIMEOUT=7` is the number 7."""

    __slots__ = ()

    def parsed(self) -> Any:
        try:
            return yaml.safe_load(str(self)) if self else ""
        except yaml.YAMLError:
            return str(self)


class _Invalid:
    """Marks a value that failed validation (None can be a valid value)."""


INVALID: Any = _Invalid()


@dataclasses.dataclass(slots=True)
class _Context:
    origins: Origins
    errors: list[str]
    warnings: list[str]

    def problem(self, path: tuple[str, ...], text: str) -> Any:
        self.errors.append(f"{origin_of(self.origins, path)}: {'.'.join(path)}: {text}")
        return INVALID


def origin_of(origins: Origins, path: tuple[str, ...]) -> str:
    """Where the value at `path` (or its nearest enclosing mapping) was set."""
    for end in range(len(path), 0, -1):
        found = origins.get(path[:end])
        if found:
            return found
    return DEFAULTS_SOURCE


def kind_of(value: Any) -> str:
    """`a string`, `a list`, … for messages about a value of the wrong type."""
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        EnvText: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def build_config(
    data: dict[str, Any], origins: Origins, errors: list[str], warnings: list[str]
) -> Config:
    """Validate merged data into a `Config`; problems are appended to `errors`.

    Unknown keys inside known sections are appended to `warnings`; keys at
    the top level are the loader's business (reserved sections live there).
    """
    ctx = _Context(origins, errors, warnings)
    base = Config()
    hints = typing.get_type_hints(Config)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        if f.name not in data:
            continue
        path = (f.name,)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _build_dataclass(
                typing.cast(type[Any], hint), data[f.name], path, getattr(base, f.name), ctx
            )
        else:
            value = _coerce(data[f.name], hint, path, ctx)
            value = _check_bounds(value, f, path, ctx)
        if value is INVALID:
            continue
        if f.name == "state_dir" and isinstance(value, str):
            value = os.path.expanduser(value)
        values[f.name] = value
    return dataclasses.replace(base, **values)


def _build_dataclass(
    cls: type[Any], given: Any, path: tuple[str, ...], default: Any, ctx: _Context
) -> Any:
    if isinstance(given, EnvText):
        given = given.parsed()
    if not isinstance(given, dict):
        return ctx.problem(path, f"must be a mapping, not {kind_of(given)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in given:
        if str(key) not in known:
            sub = (*path, str(key))
            ctx.warnings.append(
                f"{origin_of(ctx.origins, sub)}: {'.'.join(sub)}: unknown key, ignored"
            )
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in given:
            continue
        sub = (*path, name)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            inner_default = getattr(default, name) if default is not None else None
            value = _build_dataclass(
                typing.cast(type[Any], hint), given[name], sub, inner_default, ctx
            )
        else:
            value = _check_bounds(_coerce(given[name], hint, sub, ctx), f, sub, ctx)
        if value is not INVALID:
            values[name] = value
    if default is not None:
        return dataclasses.replace(default, **values)
    try:
        return cls(**values)
    except TypeError:
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        return ctx.problem(path, f"missing required keys: {', '.join(missing)}")


def _check_bounds(
    value: Any, f: dataclasses.Field[Any], path: tuple[str, ...], ctx: _Context
) -> Any:
    """Apply the field's `min`/`max` and its `check` (a function returning problems)."""
    if value is INVALID:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and value < lo:
            return ctx.problem(path, f"must be at least {lo:g}, got {value:g}")
        if hi is not None and value > hi:
            return ctx.problem(path, f"must be at most {hi:g}, got {value:g}")
    check = f.metadata.get("check")
    if check is not None:
        found = check(value)
        problems = [found] if isinstance(found, str) else list(found or ())
        for problem in problems:
            ctx.problem(path, problem)
        if problems:
            return INVALID
    return value


def _accepts_text(hint: Any) -> bool:
    if hint is str:
        return True
    origin = get_origin(hint)
    if origin is Literal:
        return all(isinstance(c, str) for c in get_args(hint))
    if origin in (Union, types.UnionType):
        return any(_accepts_text(a) for a in get_args(hint) if a is not type(None))
    return False


def _coerce(value: Any, hint: Any, path: tuple[str, ...], ctx: _Context) -> Any:
    """Return `value` as type `hint`, or INVALID after recording why it cannot be."""
    if isinstance(value, EnvText):
        value = str(value) if _accepts_text(hint) else value.parsed()
    if hint is Any:
        return value
    origin = get_origin(hint)
    if origin is Literal:
        return _coerce_choice(value, get_args(hint), path, ctx)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(get_args(hint)):
            return None
        if len(options) == 1:
            return _coerce(value, options[0], path, ctx)
        probe = _Context(ctx.origins, [], ctx.warnings)
        for option in options:
            result = _coerce(value, option, path, probe)
            if result is not INVALID:
                return result
        return ctx.problem(path, f"has the wrong type: {kind_of(value)} {value!r}")
    if origin in (list, tuple):
        return _coerce_sequence(value, hint, origin, path, ctx)
    if origin is dict:
        return _coerce_mapping(value, hint, path, ctx)
    if dataclasses.is_dataclass(hint):
        return _build_dataclass(typing.cast(type[Any], hint), value, path, None, ctx)
    return _coerce_scalar(value, hint, path, ctx)


def _coerce_choice(
    value: Any, choices: tuple[Any, ...], path: tuple[str, ...], ctx: _Context
) -> Any:
    if value in choices and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        for candidate in (value.upper(), value.lower()):
            if candidate in choices:
                return candidate
        synonym = _SYNONYMS.get(value.upper())
        if synonym in choices:
            return synonym
    shown = ", ".join(map(str, choices))
    return ctx.problem(path, f"must be one of {shown}; got {value!r}")


def _coerce_sequence(
    value: Any, hint: Any, origin: Any, path: tuple[str, ...], ctx: _Context
) -> Any:
    if not isinstance(value, list):
        return ctx.problem(path, f"expected a list, got {kind_of(value)} {value!r}")
    args = get_args(hint)
    if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
        raise TypeError(f"fixed-size tuple {hint!r} for {'.'.join(path)}: use tuple[X, ...]")
    item_hint = args[0] if args else Any
    items = []
    for i, item in enumerate(value):
        coerced = _coerce(item, item_hint, (*path, f"[{i}]"), ctx)
        if coerced is INVALID:
            return INVALID
        items.append(coerced)
    return tuple(items) if origin is tuple else items


def _coerce_mapping(value: Any, hint: Any, path: tuple[str, ...], ctx: _Context) -> Any:
    if not isinstance(value, dict):
        return ctx.problem(path, f"expected a mapping, got {kind_of(value)} {value!r}")
    args = get_args(hint)
    value_hint = args[1] if len(args) == 2 else Any
    out: dict[str, Any] = {}
    for key, item in value.items():
        coerced = _coerce(item, value_hint, (*path, str(key)), ctx)
        if coerced is INVALID:
            return INVALID
        out[str(key)] = coerced
    return out


def _coerce_scalar(value: Any, hint: Any, path: tuple[str, ...], ctx: _Context) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        return ctx.problem(path, f"expected true or false, got {kind_of(value)} {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return ctx.problem(path, f"expected an integer, got {kind_of(value)} {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return ctx.problem(path, f"expected a number, got {kind_of(value)} {value!r}")
    if hint is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return ctx.problem(path, f"expected a string, got {kind_of(value)} {value!r}")
    raise TypeError(f"unsupported config type {hint!r} for {'.'.join(path)}")  # a schema bug
