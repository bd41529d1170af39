"""The method registry: names, aliases, parameter checks and access levels.

Each capability declares its methods as `Method` values and adds them in one
place (its `methods.py`); the server looks them up here and never knows what a
capability does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cortexd.protocol import InvalidParams, InvalidRequest, MethodNotFound

if TYPE_CHECKING:
    from cortexd.server.call import Call

Access = Literal["read", "admin", "journal"]
Handler = Callable[["Call"], Awaitable[Any]]
SyncHandler = Callable[["Call"], Any]
_MISSING: Any = object()
# Integers go to SQLite (and to C code) as 64-bit: anything outside is refused
# here, once for every method, instead of failing deep inside as OverflowError.
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "an array",
}


@dataclass(frozen=True, slots=True)
class Param:
    """One named parameter of a method.

    `kind` is the JSON type expected (`float` also accepts integers, `int`
    never accepts booleans); `items` types the elements of a list; `check`
    returns a problem text or None for a value of the right type.
    """

    name: str
    kind: type
    required: bool = False
    default: Any = None
    items: type | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    def validate(self, value: Any) -> Any:
        if not _is_kind(value, self.kind):
            raise InvalidParams(
                self.name,
                f"expected {_TYPE_NAMES.get(self.kind, self.kind.__name__)}, "
                f"got {_describe(value)}",
            )
        if self.kind is float:
            value = float(value)
        elif self.kind is int and not INT64_MIN <= value <= INT64_MAX:
            raise InvalidParams(self.name, _out_of_range(value))
        if self.items is not None:
            for i, item in enumerate(value):
                if not _is_kind(item, self.items):
                    raise InvalidParams(
                        self.name,
                        f"item {i} must be {_TYPE_NAMES.get(self.items, self.items.__name__)},"
                        f" got {_describe(item)}",
                    )
                if self.items is int and not INT64_MIN <= item <= INT64_MAX:
                    raise InvalidParams(self.name, f"item {i} {_out_of_range(item)}")
        if self.choices is not None and value not in self.choices:
            raise InvalidParams(
                self.name, f"must be one of {', '.join(map(str, self.choices))}; got {value!r}"
            )
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise InvalidParams(self.name, problem)
        return value


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _out_of_range(value: int) -> str:
    return f"must be between {INT64_MIN} and {INT64_MAX} (a 64-bit integer); got {value}"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def positive(value: float) -> str | None:
    """A `check` for a number that must be greater than 0."""
    return None if value > 0 else "must be greater than 0"


def between(lo: int, hi: int) -> Callable[[int], str | None]:
    """A `check` for an integer from `lo` to `hi` (a limit, a count, a size)."""

    def check(value: int) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo} and {hi}"

    return check


@dataclass(frozen=True, slots=True)
class Method:
    """A socket method.

    `handler` is a coroutine function, or with `inline=True` a plain function
    that never blocks (ping, version): those run in the reading task with no
    task spawned, which keeps the cheapest methods cheap. `timeout` overrides
    the server's per-request deadline; `during_shutdown` lets a method answer
    while the daemon drains. `changes_state=False` marks a method that
    changes nothing `status` shows (ping, status, health): only the others
    make `status` read every component's summary again, so a caller sees
    its own change at once.
    """

    name: str
    handler: Handler | SyncHandler
    params: tuple[Param, ...] = ()
    access: Access = "read"
    aliases: tuple[str, ...] = ()
    inline: bool = False
    timeout: float | None = None
    during_shutdown: bool = False
    summary: str = ""
    param_aliases: Mapping[str, str] = field(default_factory=dict)
    changes_state: bool = True

    def bind(self, raw: Any) -> dict[str, Any]:
        """Check raw JSON params against the declaration; returns them with defaults.

        Raises:
            InvalidParams: naming the first missing, unknown or mistyped param.
            InvalidRequest: when params is neither an object nor an array.
        """
        if raw is None:
            given: dict[str, Any] = {}
        elif isinstance(raw, dict):
            given = dict(raw)
        elif isinstance(raw, list):
            if len(raw) > len(self.params):
                raise InvalidParams(
                    f"[{len(self.params)}]",
                    f"{self.name} takes at most {len(self.params)} positional params",
                )
            given = {p.name: v for p, v in zip(self.params, raw, strict=False)}
        else:
            raise InvalidRequest("params must be an object or an array")
        for alias, target in self.param_aliases.items():
            if alias in given and target not in given:
                given[target] = given.pop(alias)
        # Unknown names first: a misspelt param is the likelier mistake than
        # a missing one, and "unknown 'txt' (accepted: text)" says how to fix it.
        names = {p.name for p in self.params}
        unknown = [name for name in given if name not in names]
        if unknown:
            known = ", ".join(p.name for p in self.params) or "none"
            raise InvalidParams(sorted(unknown)[0], f"unknown param (accepted: {known})")
        out: dict[str, Any] = {}
        for p in self.params:
            value = given.get(p.name, _MISSING)
            if value is _MISSING or (value is None and not p.required):
                if p.required:
                    raise InvalidParams(p.name, "is required")
                out[p.name] = p.default
                continue
            out[p.name] = p.validate(value)
        return out


class Registry:
    """Methods by name and alias."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}
        self._canonical: dict[str, Method] = {}

    def add(self, methods: Iterable[Method]) -> None:
        for method in methods:
            for name in (method.name, *method.aliases):
                if name in self._methods:
                    raise ValueError(f"method {name!r} registered twice")
                self._methods[name] = method
            self._canonical[method.name] = method

    def get(self, name: str) -> Method:
        try:
            return self._methods[name]
        except KeyError:
            raise MethodNotFound(name) from None

    def known(self, name: str) -> bool:
        return name in self._methods

    def methods(self) -> list[Method]:
        return sorted(self._canonical.values(), key=lambda m: m.name)
