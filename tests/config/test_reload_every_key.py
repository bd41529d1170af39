"""Every live-reloadable key takes effect on reload: nothing keeps the value it had at install.

The keys come from the schema (every field whose `restart` metadata is false,
which docs/config.md's table mirrors and tests/test_docs.py checks), so a key
added later is covered without editing this file. A daemon is built in-process
with every live key set to one value, reloaded to a second value for each, and
everything reachable from its components and its method registry is searched
for what the first load left behind: a config section object of the old load
(a closure or attribute that captured `config.logs` at install), or an old
numeric value chosen so that nothing else in the daemon holds it. Where a key
has an effect a client sees at once, a real daemon shows it over the socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import shutil
import tempfile
import types
import typing
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cortexd.app import Daemon
from cortexd.config import Config, ConfigFiles, LoadedConfig, load_config
from cortexd.log import set_level
from cortexd.protocol import CortexError, ErrorCode
from cortexd.sd import SystemdNotifier
from tests.daemon import running_daemon

# Keys whose text must have a form the loader checks; every other string key
# gets a path under the test's directory, every list a one-item list of one.
TEXT_VALUES: dict[str, tuple[Any, Any]] = {
    "server.admin_group": ("cxreload-a", "cxreload-b"),
    "notify.daily_summary_time": ("07:13", "08:27"),
    "notify.external_url": ("https://a.example/cortex", "https://b.example/cortex"),
    "notify.instance": ("host-a", "host-b"),
    "repair.journal_max_size": ("321M", "123M"),
    "updates.apt_command": (("/usr/bin/apt-get",), ("apt-get",)),
    "updates.channel": ("/srv/a/manifest.json", "/srv/b/manifest.json"),
    "logs.patterns": (("alpha=first pattern",), ("beta:WARN=second pattern",)),
    "healing.allow": (("cxreload-a.service",), ("cxreload-b.service",)),
    "healing.deny": (("cxreload-c.service",), ("cxreload-d.service",)),
}
# Pairs the loader checks against each other: the first must not exceed the second.
ORDERED = (
    ("alerts.flap_low_changes", "alerts.flap_high_changes"),
    ("notify.backoff_seconds", "notify.backoff_max_seconds"),
    ("healing.backoff_seconds", "healing.backoff_max_seconds"),
    ("inference.restart_backoff_seconds", "inference.restart_backoff_max_seconds"),
)
DISTINCT_INT = 1000  # an int at or above this is unlikely to be held by anything else


@dataclasses.dataclass(frozen=True)
class Key:
    dotted: str
    field: dataclasses.Field[Any]
    hint: Any


def live_keys(cls: type[Any] = Config, prefix: str = "") -> list[Key]:
    """Every key that a reload applies at once, read from the schema's metadata."""
    hints = typing.get_type_hints(cls)
    out: list[Key] = []
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.extend(live_keys(hint, f"{dotted}."))
        elif not f.metadata.get("restart"):
            out.append(Key(dotted, f, hint))
    return out


def _numbers(key: Key, index: int, kind: type[Any]) -> tuple[Any, Any]:
    lo = key.field.metadata.get("min")
    hi = key.field.metadata.get("max")
    lo = 0 if lo is None else lo
    hi = lo + 10**6 if hi is None else hi
    if kind is bool:
        default = key.field.default
        return (not default, bool(default))
    if kind is int:
        if hi - lo > 4 * DISTINCT_INT:
            first = int(lo) + DISTINCT_INT + 7 * index
        else:
            first = int(lo) + (index % max(1, int(hi - lo)))
        second = first + 1 if first + 1 <= hi else first - 1
        return first, second
    # Floats with a fraction nothing else in the daemon uses.
    span = hi - lo
    first = lo + min(span / 3, 37.0) + index / 1024 + 0.0078125
    return first, first + span / 7 if first + span / 7 < hi else lo + (first - lo) / 2


def key_values(keys: list[Key], workdir: str) -> dict[str, tuple[Any, Any]]:
    """Two valid values for each key, both unlike its default and unlike each other."""
    values: dict[str, tuple[Any, Any]] = {}
    for index, key in enumerate(keys):
        if key.dotted in TEXT_VALUES:
            values[key.dotted] = TEXT_VALUES[key.dotted]
            continue
        hint = key.hint
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
        if origin is typing.Literal:
            choices = [c for c in args if c != key.field.default]
            values[key.dotted] = (choices[0], key.field.default)
        elif hint in (bool, int, float):
            values[key.dotted] = _numbers(key, index, hint)
        elif origin in (types.UnionType, typing.Union) and args[0] in (int, float):
            values[key.dotted] = _numbers(key, index, args[0])
        elif hint is str:
            base = os.path.join(workdir, key.dotted.replace(".", "-"))
            values[key.dotted] = (f"{base}-a", f"{base}-b")
        elif tuple in (origin, *map(typing.get_origin, args)):
            base = os.path.join(workdir, key.dotted.replace(".", "-"))
            values[key.dotted] = ((f"{base}-a",), (f"{base}-b",))
        else:
            raise AssertionError(f"{key.dotted}: no test values for {hint}; add them here")
    for low, high in ORDERED:
        (a_low, b_low), (a_high, b_high) = values[low], values[high]
        values[low] = (min(a_low, a_high), min(b_low, b_high))
        values[high] = (max(a_low, a_high), max(b_low, b_high))
    for check in {k.dotted.rsplit(".", 1)[0] for k in keys if k.dotted.startswith("checks.")}:
        # A check keeps its defaults unless warning_clear <= warning <= critical
        # and critical_clear <= critical.
        names = [f"{check}.{n}" for n in ("warning_clear", "critical_clear", "warning", "critical")]
        for load_index in (0, 1):
            ordered = sorted(values[n][load_index] for n in names)
            for name, value in zip(names, ordered, strict=True):
                pair = list(values[name])
                pair[load_index] = value
                values[name] = (pair[0], pair[1])
    return values


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *path, last = dotted.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = list(value) if isinstance(value, tuple) else value
    return out


def load(workdir: str, values: dict[str, Any]) -> LoadedConfig:
    fixed = {
        "state_dir": os.path.join(workdir, "state"),
        "server": {"socket_path": os.path.join(workdir, "c.sock")},
    }
    overrides = nested(values)
    for section, keys in fixed.items():
        if isinstance(keys, dict):
            overrides.setdefault(section, {}).update(keys)
        else:
            overrides[section] = keys
    none = os.path.join(workdir, "none")
    return load_config(files=ConfigFiles(system=none, user=none), environ={}, overrides=overrides)


# -- what the daemon still holds ------------------------------------------------------------


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"[{k!r}]", v
        return
    if isinstance(obj, (list, tuple, set, frozenset, deque)):
        for i, v in enumerate(obj):
            yield f"[{i}]", v
        return
    if isinstance(obj, functools.partial):
        yield ".func", obj.func
        yield from ((f".args[{i}]", a) for i, a in enumerate(obj.args))
        yield from ((f".keywords[{k}]", v) for k, v in obj.keywords.items())
        return
    if isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
        return
    if isinstance(obj, types.FunctionType):
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=True):
            with contextlib.suppress(ValueError):  # an empty cell
                yield f"<closure {name}>", cell.cell_contents
        yield from ((f"<default {i}>", d) for i, d in enumerate(obj.__defaults__ or ()))
        yield from ((f"<default {k}>", d) for k, d in (obj.__kwdefaults__ or {}).items())
        return
    if not type(obj).__module__.startswith(("cortexd", "tests")):
        return
    for name in getattr(obj, "__dict__", {}):
        yield f".{name}", getattr(obj, name)
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                yield f".{name}", getattr(obj, name)


def reachable(roots: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every object reachable from `roots` through the daemon's own objects, with a path."""
    seen: set[int] = set()
    todo = deque(roots.items())
    while todo:
        path, obj = todo.popleft()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, logging.Logger)):
            continue
        seen.add(id(obj))
        yield path, obj
        todo.extend((path + step, child) for step, child in _children(obj))


def config_objects(config: Any) -> list[Any]:
    found = [config]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            found.extend(config_objects(value))
    return found


def distinct(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= DISTINCT_INT
    return isinstance(value, float) and value != int(value)


@pytest.fixture
def workdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="cxrl", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


CONFIG_MD = Path(__file__).resolve().parents[2] / "docs" / "config.md"
DOC_ROW = re.compile(r"^\| `([a-z_<>.]+)` \|(?:[^|]*\|){3} (yes|no) \|", re.M)


def test_the_keys_are_the_ones_docs_config_md_calls_live() -> None:
    documented = {key for key, restart in DOC_ROW.findall(CONFIG_MD.read_text()) if restart == "no"}
    checks = re.compile(r"^checks\.[a-z_]+\.")
    from_schema = {checks.sub("checks.<id>.", k.dotted) for k in live_keys()}
    assert documented == from_schema


def test_every_live_key_has_test_values(workdir: str) -> None:
    keys = live_keys()
    values = key_values(keys, workdir)
    assert {k.dotted for k in keys} == values.keys()
    assert "logs.max_entries" in values and "server.request_timeout" in values
    first = load(workdir, {k: a for k, (a, _) in values.items()}).config
    second = load(workdir, {k: b for k, (_, b) in values.items()}).config
    default = load(workdir, {}).config
    for key in keys:
        a, b, d = (_get(c, key.dotted) for c in (first, second, default))
        assert a != b, f"{key.dotted}: both loads give {a!r}"
        assert a != d, f"{key.dotted}: the first load is the default {d!r}"


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def test_a_reload_leaves_nothing_of_the_old_values(
    workdir: str, caplog: pytest.LogCaptureFixture
) -> None:
    values = key_values(live_keys(), workdir)
    first = load(workdir, {k: a for k, (a, _) in values.items()})
    second = load(workdir, {k: b for k, (_, b) in values.items()})
    daemon = Daemon(first, loader=lambda: second, notifier=SystemdNotifier({}))
    daemon.install_features()
    old = {id(o): o for o in config_objects(first.config)}
    old_values = {k: a for k, (a, _) in values.items() if distinct(a)}
    assert old_values, "no distinctive values to look for"
    try:
        with caplog.at_level(logging.WARNING):
            answer = anyio.run(daemon.reload)
    finally:
        set_level("INFO")
    assert answer["restart_required"] == []
    assert daemon.config == second.config
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failed, failed

    roots = {
        "daemon.components": daemon.components,
        "daemon.registry": daemon.registry,
        "daemon.server": daemon.server,
    }
    stale: list[str] = []
    for path, obj in reachable(roots):
        if id(obj) in old and obj is old[id(obj)]:
            stale.append(f"{path} is the old {type(obj).__name__}")
        elif distinct(obj):
            stale.extend(
                f"{path} = {obj!r}, the old {key}"
                for key, value in old_values.items()
                if type(obj) is type(value) and obj == value
            )
    assert not stale, "kept from before the reload:\n" + "\n".join(stale)


def test_a_reloaded_logs_max_entries_bounds_the_limit_param() -> None:
    """The bound of `limit` is the running `logs.max_entries`, not the one at start."""
    with running_daemon({}) as daemon:
        with pytest.raises(CortexError) as refused:
            daemon.call("logs.errors", {"limit": 150_000})
        assert refused.value.code == ErrorCode.INVALID_PARAMS
        assert "between 1 and 100000" in str(refused.value)

        config: dict[str, Any] = {"logs": {"max_entries": 200_000}}
        daemon.write_config({**_current(daemon), **config})
        daemon.call("config.reload")
        try:
            daemon.call("logs.errors", {"limit": 150_000})
        except CortexError as exc:
            # Without a readable journal the call is unavailable, but the
            # limit itself is accepted.
            assert exc.code != ErrorCode.INVALID_PARAMS, exc
        with pytest.raises(CortexError) as still:
            daemon.call("logs.errors", {"limit": 250_000})
        assert "between 1 and 200000" in str(still.value)


def _current(daemon: Any) -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(Path(daemon.config_path).read_text()) or {}
    return loaded
