"""Integer params are 64-bit: the registry refuses anything wider, for every method.

Generated from the real registry, so a method added later is covered; one case
goes over the real socket to show the daemon answers INVALID_PARAMS (it used to
be INTERNAL_ERROR from an OverflowError deep in SQLite) and keeps serving.
"""

from __future__ import annotations

from typing import Any

import pytest

from cortexd.protocol import InvalidParams
from cortexd.server import Method, Param
from cortexd.server.registry import INT64_MAX, INT64_MIN
from tests.daemon import DaemonProcess
from tests.security.registry import registered_methods

# Values that pass each kind's own check, tried in order, to fill the params
# that come before the one under test.
_CANDIDATES: dict[type, tuple[Any, ...]] = {
    str: ("x", "a" * 64, "20261123-120000", "critical", "system", "1h", "jsonl", "up"),
    int: (1, 10),
    float: (1.0, 60.0),
    bool: (False,),
    list: ([], ["x"], [{"role": "user", "content": "hi"}]),
    dict: ({},),
}


def _valid_value(param: Param) -> Any:
    for value in _CANDIDATES.get(param.kind, ()):
        try:
            param.validate(value)
        except InvalidParams:
            continue
        return value
    raise AssertionError(f"no valid test value for {param.name} ({param.kind.__name__})")


def _int_params() -> list[tuple[Method, Param]]:
    return [(m, p) for m in registered_methods() for p in m.params if p.kind is int]


CASES = _int_params()


def test_the_registry_has_integer_params_to_check() -> None:
    assert len(CASES) >= 10, [f"{m.name}.{p.name}" for m, p in CASES]


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1, 10**30])
@pytest.mark.parametrize(("method", "param"), CASES, ids=[f"{m.name}.{p.name}" for m, p in CASES])
def test_every_integer_param_refuses_values_past_int64(
    method: Method, param: Param, value: int
) -> None:
    given: dict[str, Any] = {}
    for earlier in method.params:
        if earlier is param:
            break
        if earlier.required:
            given[earlier.name] = _valid_value(earlier)
    given[param.name] = value
    with pytest.raises(InvalidParams) as caught:
        method.bind(given)
    assert caught.value.data["param"] == param.name
    assert "64-bit integer" in caught.value.message


def test_the_int64_bounds_themselves_pass_the_type_check() -> None:
    param = Param("n", int)
    assert param.validate(INT64_MAX) == INT64_MAX
    assert param.validate(INT64_MIN) == INT64_MIN


def test_integer_list_items_are_bounded_too() -> None:
    param = Param("ids", list, items=int)
    with pytest.raises(InvalidParams, match="item 1 must be between"):
        param.validate([1, INT64_MAX + 1])


def test_deadletter_show_past_int64_is_invalid_params_over_the_socket(
    daemon: DaemonProcess,
) -> None:
    frames = daemon.raw(
        b'{"jsonrpc":"2.0","id":1,"method":"deadletter.show","params":{"id":9223372036854775808}}\n'
    )
    assert len(frames) == 1
    error = frames[0]["error"]
    assert error["data"]["name"] == "INVALID_PARAMS"
    assert error["data"]["param"] == "id"
    assert "9223372036854775808" in error["message"]
    # The largest int64 is a well-formed id that simply does not exist.
    frames = daemon.raw(
        b'{"jsonrpc":"2.0","id":2,"method":"deadletter.show","params":{"id":9223372036854775807}}\n'
    )
    assert frames[0]["error"]["data"]["name"] == "NOT_FOUND"
    assert daemon.call("ping")["pong"] is True
