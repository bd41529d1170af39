"""`status` and `health` answer from snapshots that stay fresh.

The unit tests step a fake clock through `SummaryBoard` and `HealthSnapshot`;
the daemon tests change what a component reports behind the daemon's back
(a check's result) and poll `status` and `health` with a deadline until the
change shows, which it must within the publish interval.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cortexd.config.schema import ChecksConfig
from cortexd.monitor.health import HealthSnapshot
from cortexd.summaries import DEFAULT_MAX_AGE, SummaryBoard
from tests.daemon import running_daemon

DEADLINE = 20.0
ALL_CHECKS = [f.name for f in dataclasses.fields(ChecksConfig)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Part:
    """A component whose summary the test changes, counting how often it is read."""

    def __init__(self, name: str, max_age: float | None = DEFAULT_MAX_AGE) -> None:
        self.name = name
        self.state_max_age = max_age
        self.value = 0
        self.reads = 0

    def state(self) -> dict[str, Any]:
        self.reads += 1
        return {"state": "running", "value": self.value}


class Broken:
    name = "broken"

    def state(self) -> dict[str, Any]:
        raise RuntimeError("state is gone")


def decoded(board: SummaryBoard, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(board.components_json(**kwargs))
    return result


def test_many_status_reads_within_the_interval_read_each_component_once() -> None:
    clock = Clock()
    parts = [Part(f"c{i}") for i in range(20)]
    board = SummaryBoard(parts, clock=clock)
    answers = {board.components_json() for _ in range(500)}
    assert len(answers) == 1
    assert [p.reads for p in parts] == [1] * 20


def test_a_change_shows_once_the_interval_passed() -> None:
    clock = Clock()
    part = Part("a")
    board = SummaryBoard([part], clock=clock)
    assert decoded(board)["a"]["value"] == 0
    part.value = 7
    clock.now += DEFAULT_MAX_AGE / 2
    assert decoded(board)["a"]["value"] == 0  # still within the interval
    clock.now += DEFAULT_MAX_AGE
    assert decoded(board)["a"]["value"] == 7


def test_a_published_change_shows_at_once_and_only_that_component_is_read() -> None:
    clock = Clock()
    quiet, loud = Part("quiet", max_age=None), Part("loud", max_age=None)
    board = SummaryBoard([quiet, loud], clock=clock)
    decoded(board)
    loud.value = quiet.value = 3
    clock.now += 3600  # no age limit: nothing is read again unprompted
    assert decoded(board) == {
        "quiet": {"state": "running", "value": 0},
        "loud": {"state": "running", "value": 0},
    }
    board.publish("loud")
    assert decoded(board)["loud"]["value"] == 3
    assert (quiet.reads, loud.reads) == (1, 2)


def test_a_request_that_may_change_state_makes_every_summary_read_again() -> None:
    clock = Clock()
    part = Part("a", max_age=None)
    board = SummaryBoard([part], clock=clock)
    assert decoded(board, changes=0)["a"]["value"] == 0
    part.value = 1
    assert decoded(board, changes=0)["a"]["value"] == 0
    assert decoded(board, changes=1)["a"]["value"] == 1


def test_the_per_request_part_comes_first_and_components_keep_their_order() -> None:
    board = SummaryBoard([Part("b"), Part("a")], clock=Clock())
    raw = board.components_json({"server": {"inflight": 2}})
    assert list(orjson.loads(raw)) == ["server", "b", "a"]
    assert orjson.loads(SummaryBoard([], clock=Clock()).components_json({"server": {}})) == {
        "server": {}
    }


def test_a_component_added_later_is_summarised_too() -> None:
    parts: list[Part] = [Part("a")]
    board = SummaryBoard(parts, clock=Clock())
    assert list(decoded(board)) == ["a"]
    parts.append(Part("b"))
    assert list(decoded(board)) == ["a", "b"]


def test_a_broken_component_costs_its_own_entry_only(caplog: pytest.LogCaptureFixture) -> None:
    board = SummaryBoard([Part("a"), Broken()], clock=Clock())
    found = decoded(board)
    assert found["broken"] == {"state": "error", "error": "state is gone"}
    assert found["a"]["state"] == "running"
    assert "broken.state() failed" in caplog.text


def test_health_is_built_again_after_a_result_a_change_or_the_interval() -> None:
    clock = Clock()
    built: list[int] = []

    def build() -> dict[str, Any]:
        built.append(1)
        return {"status": "healthy", "builds": len(built)}

    snapshot = HealthSnapshot(build, max_age=0.1, clock=clock)
    for _ in range(100):
        assert orjson.loads(snapshot.encoded(0)) == {"status": "healthy", "builds": 1}
    snapshot.invalidate()  # a check result arrived
    assert snapshot.document(0)["builds"] == 2
    assert snapshot.document(1)["builds"] == 3  # a request that may change state
    clock.now += 0.1
    assert snapshot.document(1)["builds"] == 4
    assert snapshot.generation == 4


# -- in the daemon -------------------------------------------------------------------


def only(check_id: str, **settings: Any) -> dict[str, Any]:
    checks: dict[str, Any] = {name: {"enabled": False} for name in ALL_CHECKS}
    checks[check_id] = settings
    return {"checks": checks}


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value}")
        time.sleep(0.05)


def test_status_and_health_follow_a_check_result_that_changes_behind_them(
    tmp_path: Path,
) -> None:
    config = only("cortex_world_writable", interval_seconds=0.2)
    config["repair"] = {
        "config_dir": str(tmp_path / "etc"),
        "runtime_dir": str(tmp_path / "run"),
    }
    with running_daemon(config) as d:
        state_dir = Path(d.state_dir)
        health = lambda: d.call("health")  # noqa: E731
        check_of = lambda h: h["checks"].get("cortex_world_writable")  # noqa: E731
        poll(health, lambda h: check_of(h) == "pass", "the check to pass")
        runs = d.call("status")["components"]["monitor"]["runs"]
        # Nothing but polling from here on: only the daemon's own work can
        # move what `status` and `health` say.
        poll(
            lambda: d.call("status")["components"]["monitor"]["runs"],
            lambda r: r > runs + 2,
            "status to show more check runs",
        )

        loose = state_dir / "loose"
        loose.write_text("x")
        os.chmod(loose, 0o666)
        bad = poll(health, lambda h: check_of(h) != "pass", "health to show the bad file")
        assert bad["status"] != "healthy"
        poll(
            lambda: d.call("status")["components"]["monitor"]["statuses"],
            lambda s: s["PASS"] == 0,
            "status to count the check as not passing",
        )

        os.chmod(loose, 0o644)
        poll(health, lambda h: check_of(h) == "pass", "health to show the check passing again")
