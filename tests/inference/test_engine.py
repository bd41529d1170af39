"""The engine's queueing, cancellation, model changes, crashes and restarts.

The runner here is a real child process speaking the real frames through
the worker's own loop, with a stand-in model (tests/inference/standin_runner.py)
in place of llama.cpp: a test can hold a request "running" for as long as it
needs, and end the runner the ways a real one ends (abort, ignoring a
cancel, a malformed frame), so orders and states are deterministic. The real
model is exercised through the daemon in the other modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from cortexd.config.schema import InferenceConfig
from cortexd.inference import engine as engine_module
from cortexd.inference.engine import Engine, Viewer
from cortexd.inference.job import GenerationParams, Job
from cortexd.inference.queue import Priority
from cortexd.protocol import (
    Busy,
    InternalError,
    ModelNotLoaded,
    NotFound,
    PermissionDenied,
    QueueFull,
    ShuttingDown,
    Unavailable,
)
from tests.inference.helpers import write_tiny_gguf

DEADLINE = 20.0
STANDIN = (sys.executable, "-m", "tests.inference.standin_runner")


class Alerts:
    """Records what the engine tells the alert manager."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def notice(self, *, source: str, labels: Mapping[str, str], **kw: Any) -> None:
        self.events.append(("fire", labels["model"], kw["title"]))

    async def condition_cleared(self, *, source: str, labels: Mapping[str, str]) -> None:
        self.events.append(("clear", labels["model"], ""))

    def open_alerts(self, source: str | None = None) -> list[Any]:
        """Alerts fired and not cleared since, as the alert manager keeps them."""
        firing: dict[str, Any] = {}
        for kind, model, _title in self.events:
            if kind == "fire":
                firing[model] = SimpleNamespace(labels={"model": model})
            else:
                firing.pop(model, None)
        return list(firing.values())


class Harness:
    def __init__(self, tmp: Path, depth: int = 3, **settings: Any) -> None:
        self.dir = tmp / "models"
        self.dir.mkdir(exist_ok=True)
        self.log = tmp / "ran.log"
        self.log.touch()
        self.alerts = Alerts()
        for name in ("first", "second", "refuse", "abort-on-load"):
            write_tiny_gguf(str(self.dir / f"{name}.gguf"), name)
        settings.setdefault("model_path", str(self.dir / "first.gguf"))
        settings.setdefault("restart_backoff_seconds", 0.05)
        config = InferenceConfig(queue_depth=depth, **settings)
        self.engine = Engine(
            config,
            model_dirs=[str(self.dir)],
            alerts=self.alerts,
            command=STANDIN,
            env={**os.environ, "CORTEX_STANDIN_LOG": str(self.log)},
        )

    def path(self, name: str) -> str:
        return str(self.dir / f"{name}.gguf")

    def ran(self) -> list[str]:
        return self.log.read_text().split()

    def job(
        self, rid: str, priority: Priority = "interactive", uid: int = 1000, prompt: str = "hi"
    ) -> Job:
        return Job(
            request_id=rid,
            priority=priority,
            method="inference.generate",
            uid=uid,
            params=GenerationParams(),
            prompt=prompt,
        )

    async def until(self, predicate: Any) -> None:
        # Polled: the runner is another process, with no event to set here.
        with anyio.fail_after(DEADLINE):
            while True:
                if predicate():
                    return
                await anyio.sleep(0.005)

    async def running(self, rid: str) -> None:
        """Until the runner has started request `rid`."""
        await self.until(lambda: any(line.endswith(f":{rid}") for line in self.ran()))


async def outcome(job: Job) -> dict[str, Any]:
    with anyio.fail_after(DEADLINE):
        while not job.finished:
            await job.wait()
            job.take_pieces()
    return job.outcome()


@contextlib.asynccontextmanager
async def started(tmp: Path, *, ready: bool = True, **settings: Any) -> AsyncIterator[Harness]:
    """An engine with its stand-in runner (ready, unless `ready` is false), stopped after.

    The engine's task group lives in a task of its own, so the context can be
    entered and left from different tasks (pytest-asyncio runs a fixture's
    setup and teardown apart).
    """
    h = Harness(tmp, **settings)
    up, down = anyio.Event(), anyio.Event()

    async def own() -> None:
        async with anyio.create_task_group() as tg:
            await h.engine.start(tg)
            up.set()
            await down.wait()
            with anyio.fail_after(DEADLINE):
                await h.engine.stop()
            tg.cancel_scope.cancel()

    owner = asyncio.get_running_loop().create_task(own())
    await up.wait()
    try:
        if ready:
            await h.until(lambda: h.engine.state == "ready")
        yield h
    finally:
        down.set()
        await owner


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with started(tmp_path) as h:
        yield h


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_interactive_requests_run_before_background_ones(harness: Harness) -> None:
    engine = harness.engine
    a = harness.job("a", prompt="hold")
    assert engine.submit(a) == 1
    await harness.running("a")
    b, c, d = harness.job("b", "background"), harness.job("c"), harness.job("d")
    assert engine.submit(b) == 1
    assert engine.submit(c) == 1  # ahead of the background request
    assert engine.submit(d) == 2
    assert engine.position("b") == 3
    with pytest.raises(QueueFull):
        engine.submit(harness.job("e"))
    status = engine.status()
    assert [q["request_id"] for q in status["queue"]] == ["c", "d", "b"]
    assert status["in_flight"]["request_id"] == "a"
    engine.cancel("a", uid=1000, is_admin=False)
    assert (await outcome(a))["stop_reason"] == "cancelled"
    for job in (b, c, d):
        assert (await outcome(job))["text"] == "hello world"
    assert harness.ran() == ["first:a", "first:c", "first:d", "first:b"]
    assert engine.status()["totals"]["completed"] == 3


async def test_only_the_owner_or_an_admin_may_cancel(harness: Harness) -> None:
    engine = harness.engine
    engine.submit(harness.job("a", uid=1000, prompt="hold"))
    await harness.running("a")
    queued = harness.job("q", uid=1000)
    engine.submit(queued)
    with pytest.raises(PermissionDenied):
        engine.cancel("q", uid=1001, is_admin=False)
    with pytest.raises(NotFound):
        engine.cancel("nope", uid=1000, is_admin=False)
    assert engine.cancel("q", uid=1001, is_admin=True)["phase"] == "queued"
    result = await outcome(queued)
    assert result["stop_reason"] == "cancelled"
    assert result["cancelled_in"] == "queue"
    assert engine.status()["queue_depth"] == 0
    assert engine.cancel("a", uid=1000, is_admin=False)["phase"] == "generating"


async def test_a_model_change_drains_the_queue_first_and_is_single_flight(
    harness: Harness,
) -> None:
    engine = harness.engine
    a, b = harness.job("a", prompt="hold"), harness.job("b")
    engine.submit(a)
    engine.submit(b)
    await harness.running("a")
    old_pid = engine.status()["runner"]["pid"]
    async with anyio.create_task_group() as tg:
        loaded: list[dict[str, Any]] = []

        async def load() -> None:
            loaded.append(await engine.load(harness.path("second")))

        tg.start_soon(load)
        await harness.until(lambda: engine.state == "loading")
        with pytest.raises(Busy):
            await engine.load(harness.path("first"))
        with pytest.raises(ModelNotLoaded) as info:
            engine.submit(harness.job("late"))
        assert info.value.data["state"] == "loading"
        engine.cancel("a", uid=1000, is_admin=True)
    assert loaded[0]["state"] == "ready"
    assert loaded[0]["model"]["name"] == "second"
    assert loaded[0]["path"] == harness.path("second")
    # Both queued requests ran on the old model, then its runner was ended.
    assert harness.ran() == ["first:a", "first:b"]
    assert (await outcome(b))["stop_reason"] == "stop"
    assert not pid_alive(old_pid)
    after = harness.job("after")
    engine.submit(after)
    await outcome(after)
    assert harness.ran()[-1] == "second:after"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("refuse", "refuse.gguf is refused"), ("abort-on-load", "SIGABRT while loading")],
)
async def test_a_model_that_fails_to_load_keeps_the_running_model(
    harness: Harness, name: str, expected: str
) -> None:
    engine = harness.engine
    pid = engine.status()["runner"]["pid"]
    with pytest.raises(Unavailable) as info:
        await engine.load(harness.path(name))
    assert expected in info.value.message
    assert info.value.data["state"] == "ready"
    status = engine.status()
    assert status["state"] == "ready"
    assert status["model"]["name"] == "first"
    # The path that serves, not the one that failed.
    assert status["path"] == harness.path("first")
    assert status["runner"]["pid"] == pid
    assert expected in status["last_error"]["reason"]
    assert status["last_error"]["path"] == harness.path(name)
    job = harness.job("after")
    engine.submit(job)
    assert (await outcome(job))["text"] == "hello world"
    if name == "abort-on-load":
        assert info.value.data["signal"] == "SIGABRT"
        assert "standin: abort-on-load.gguf makes me abort" in info.value.data["stderr"]
        await harness.until(lambda: ("fire", harness.path(name)) in _fired(harness))


def _fired(h: Harness) -> list[tuple[str, str]]:
    return [(kind, path) for kind, path, _ in h.alerts.events]


async def test_a_path_outside_the_model_directories_is_refused(
    harness: Harness, tmp_path: Path
) -> None:
    outside = write_tiny_gguf(str(tmp_path / "outside.gguf"), "outside")
    link = tmp_path / "models" / "link.gguf"
    link.symlink_to(outside)
    missing = str(tmp_path / "missing.gguf")
    messages = []
    for path in (outside, str(link), missing, "/etc/shadow"):
        with pytest.raises(PermissionDenied) as info:
            await harness.engine.load(path)
        messages.append(info.value.message)
    # One answer whether or not the file exists.
    assert len(set(messages)) == 1
    assert harness.engine.status()["last_error"] is None


async def test_one_failing_request_does_not_stop_the_runner(harness: Harness) -> None:
    engine = harness.engine
    pid = engine.status()["runner"]["pid"]
    broken, oom, fine = (
        harness.job("x", prompt="explode"),
        harness.job("y", prompt="oom"),
        harness.job("z"),
    )
    for job in (broken, oom, fine):
        engine.submit(job)
    with pytest.raises(InternalError) as bug:
        await outcome(broken)
    assert bug.value.data["request_id"] == "x"
    with pytest.raises(Unavailable) as memory:
        await outcome(oom)
    assert memory.value.data["reason"] == "out_of_memory"
    assert (await outcome(fine))["text"] == "hello world"
    status = engine.status()
    assert status["totals"]["failed"] == 2
    assert status["runner"]["pid"] == pid
    assert status["runner"]["restarts"] == 0


async def test_a_crash_fails_the_running_request_keeps_the_queue_and_restarts(
    harness: Harness,
) -> None:
    engine = harness.engine
    pid = engine.status()["runner"]["pid"]
    doomed, waiting = harness.job("a", prompt="abort"), harness.job("b")
    engine.submit(doomed)
    engine.submit(waiting)
    with pytest.raises(Unavailable) as info:
        await outcome(doomed)
    data = info.value.data
    assert data["signal"] == "SIGABRT"
    assert data["during"] == "generating"
    assert data["request_id"] == "a"
    assert info.value.message.startswith("inference runner crashed: SIGABRT while generating")
    assert (await outcome(waiting))["text"] == "hello world"
    status = engine.status()
    assert status["state"] == "ready"
    assert status["runner"]["pid"] != pid
    assert status["runner"]["restarts"] == 1
    assert status["runner"]["last_exit"]["how"] == "SIGABRT"
    assert not pid_alive(pid)
    path = harness.path("first")
    await harness.until(lambda: _fired(harness)[-2:] == [("fire", path), ("clear", path)])


async def test_requests_arriving_while_it_restarts_wait_for_it(tmp_path: Path) -> None:
    async with started(tmp_path, restart_backoff_seconds=0.5) as h:
        doomed = h.job("a", prompt="abort")
        h.engine.submit(doomed)
        with pytest.raises(Unavailable):
            await outcome(doomed)
        status = h.engine.status()
        assert status["state"] == "failed"
        assert status["failed_at"] is not None
        assert "restarting in 0.5s" in status["reason"]
        assert status["runner"]["next_restart"] is not None
        late = h.job("late")
        h.engine.submit(late)  # kept: the model served before, it is coming back
        assert (await outcome(late))["text"] == "hello world"


async def test_a_runner_that_ignores_a_cancel_is_killed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "KILL_GRACE", 0.3)
    engine = harness.engine
    stuck = harness.job("a", prompt="deaf")
    engine.submit(stuck)
    await harness.running("a")
    engine.cancel("a", uid=1000, is_admin=False)
    with pytest.raises(Unavailable) as info:
        await outcome(stuck)
    assert info.value.data["signal"] == "SIGKILL"
    assert "did not stop request a" in info.value.message
    await harness.until(lambda: engine.state == "ready")


async def test_a_malformed_frame_ends_the_runner(harness: Harness) -> None:
    engine = harness.engine
    job = harness.job("a", prompt="garbage")
    engine.submit(job)
    with pytest.raises(Unavailable) as info:
        await outcome(job)
    assert "bad frame" in info.value.message
    await harness.until(lambda: engine.state == "ready")


async def test_an_exit_in_the_middle_of_a_frame_is_reported_as_such(harness: Harness) -> None:
    engine = harness.engine
    job = harness.job("a", prompt="half")
    engine.submit(job)
    with pytest.raises(Unavailable) as info:
        await outcome(job)
    assert info.value.data["exit_status"] == 7
    assert info.value.data["signal"] is None
    assert info.value.message == (
        f"inference runner crashed: exit status 7 while generating with {harness.path('first')}"
        " (the runner's stream ended inside a frame)"
    )
    await harness.until(lambda: engine.state == "ready")


async def test_it_gives_up_after_the_configured_failed_starts(tmp_path: Path) -> None:
    bad = str(tmp_path / "models" / "abort-on-load.gguf")
    async with started(tmp_path, ready=False, model_path=bad, max_load_failures=2) as h:
        engine = h.engine
        await h.until(lambda: "gave up" in (engine.status()["reason"] or ""))
        status = engine.status()
        assert status["state"] == "failed"
        assert "SIGABRT while loading" in status["reason"]
        assert "gave up after 2 failed starts" in status["reason"]
        assert status["runner"]["restarts"] == 1
        assert status["runner"]["crashes"] == 2
        assert status["runner"]["next_restart"] is None
        with pytest.raises(ModelNotLoaded):
            engine.submit(h.job("a"))
        # Nothing more is tried until a reload.
        await anyio.sleep(0.3)
        assert engine.status()["runner"]["crashes"] == 2
        engine.apply_config(engine.config, [str(h.dir)])
        await h.until(lambda: engine.status()["runner"]["crashes"] == 4)


async def test_unload_ends_the_runner_process(harness: Harness) -> None:
    engine = harness.engine
    pid = engine.status()["runner"]["pid"]
    status = await engine.unload()
    assert status["state"] == "unloaded"
    assert status["runner"]["pid"] is None
    assert not pid_alive(pid)
    with pytest.raises(ModelNotLoaded):
        engine.submit(harness.job("a"))


async def test_stop_cancels_waiting_requests_and_ends_the_runner(tmp_path: Path) -> None:
    async with started(tmp_path) as h:
        pid = h.engine.status()["runner"]["pid"]
        running, waiting = h.job("a", prompt="hold"), h.job("b")
        h.engine.submit(running)
        h.engine.submit(waiting)
        await h.running("a")
        await h.engine.stop()
        assert (await outcome(waiting))["stop_reason"] == "cancelled"
        assert running.finished
        assert not pid_alive(pid)


async def test_shutting_down_answers_queued_and_running_requests(harness: Harness) -> None:
    engine = harness.engine
    running, waiting = harness.job("a", prompt="hold"), harness.job("b")
    engine.submit(running)
    engine.submit(waiting)
    await harness.running("a")
    engine.shutting_down()
    for job in (running, waiting):
        with pytest.raises(ShuttingDown):
            await outcome(job)
    with pytest.raises(ShuttingDown):
        engine.submit(harness.job("c"))
    assert "first:b" not in harness.ran()


async def test_a_reader_has_a_share_of_the_queue_and_sees_only_their_own(
    tmp_path: Path,
) -> None:
    # A queue of 8: 2 waiting requests per reader, 2 places kept for admins.
    async with started(tmp_path, depth=8) as h:
        engine = h.engine
        engine.submit(h.job("admin-running", uid=0, prompt="hold"))
        await h.running("admin-running")
        for rid in ("r1", "r2"):
            engine.submit(h.job(rid, uid=1001), privileged=False)
        with pytest.raises(QueueFull) as mine:
            engine.submit(h.job("r3", uid=1001), privileged=False)
        assert mine.value.data["scope"] == "user"
        assert mine.value.data["limit"] == 2
        for n in range(4):  # other readers fill what readers may use
            engine.submit(h.job(f"o{n}", uid=2000 + n // 2), privileged=False)
        with pytest.raises(QueueFull) as shared:
            engine.submit(h.job("o4", uid=3000), privileged=False)
        assert shared.value.data["scope"] == "queue"
        assert shared.value.data["reserved"] == 2
        engine.submit(h.job("admin-1", uid=0), privileged=True)
        engine.submit(h.job("admin-2", uid=1), privileged=True)
        view = engine.status(Viewer(uid=1001, is_admin=False))
        assert [q["request_id"] for q in view["queue"]] == ["r1", "r2"]
        assert [q["position"] for q in view["queue"]] == [1, 2]
        assert view["in_flight"] is None
        assert view["hidden"] == {"queued": 6, "in_flight": 1}
        full = engine.status(Viewer(uid=0, is_admin=True))
        assert len(full["queue"]) == 8
        assert full["hidden"] == {"queued": 0, "in_flight": 0}


async def test_a_failed_load_is_not_what_keep_alive_brings_back(tmp_path: Path) -> None:
    async with started(tmp_path, keep_alive=0.3) as h:
        engine = h.engine
        with pytest.raises(Unavailable):
            await engine.load(h.path("refuse"))
        await h.until(lambda: engine.state == "idle")
        assert engine.status()["path"] == h.path("first")
        job = h.job("woken")
        engine.submit(job)
        assert (await outcome(job))["text"] == "hello world"
        assert h.ran()[-1] == "first:woken"


async def test_a_crashed_model_given_up_for_another_ends_its_alert(tmp_path: Path) -> None:
    bad = str(tmp_path / "models" / "abort-on-load.gguf")
    async with started(tmp_path, ready=False, model_path=bad, max_load_failures=1) as h:
        engine = h.engine
        await h.until(lambda: ("fire", bad) in _fired(h))
        await h.until(lambda: engine.status()["state"] == "failed")
        assert ("clear", bad) not in _fired(h)
        await engine.load(h.path("second"))
        await h.until(lambda: ("clear", bad) in _fired(h))
        assert engine.status()["state"] == "ready"
