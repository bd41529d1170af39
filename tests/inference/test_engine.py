"""The engine's queueing, cancellation rights, model changes and failure isolation.

A stand-in model replaces llama.cpp here (the real model is exercised through
the daemon in the other modules): it lets a test hold a request "running"
for as long as it needs, so orders and states are deterministic.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from cortexd.config.schema import InferenceConfig
from cortexd.inference.engine import Engine
from cortexd.inference.job import GenerationParams, Job
from cortexd.inference.queue import Priority
from cortexd.protocol import (
    Busy,
    InternalError,
    ModelNotLoaded,
    NotFound,
    PermissionDenied,
    QueueFull,
    Unavailable,
)

DEADLINE = 10.0


class StandIn:
    """A model that runs jobs on the worker thread and records what it ran."""

    def __init__(self, name: str, log: list[str], gates: dict[str, threading.Event]) -> None:
        self.name = name
        self.log = log
        self.gates = gates
        self.started = threading.Event()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "size_bytes": 1, "n_ctx": 64}

    def close(self) -> None:
        self.log.append(f"close {self.name}")

    def generate(self, job: Job, emit: Any) -> dict[str, Any]:
        self.log.append(f"{self.name}:{job.request_id}")
        job.phase = "generating"
        self.started.set()
        gate = self.gates.get(job.request_id)
        if gate is not None:
            gate.wait(DEADLINE)
        if job.prompt == "explode":
            raise RuntimeError("a bug in one request")
        if job.prompt == "oom":
            raise Unavailable("out of memory while generating", reason="out_of_memory")
        emit("hello ")
        emit("world")
        reason = job.stop_requested or "stop"
        return {
            "request_id": job.request_id,
            "text": "hello world",
            "stop_reason": reason,
            "prompt_eval_count": 1,
            "eval_count": 2,
            "eval_duration": 1000,
        }


class Harness:
    def __init__(self, depth: int = 3) -> None:
        self.log: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.models: list[StandIn] = []
        config = InferenceConfig(model_path="first", queue_depth=depth)
        self.engine = Engine(config, loader=self._load, validate=self._validate)

    def _validate(self, path: str, config: InferenceConfig) -> None:
        if path == "bad":
            from cortexd.inference.gguf import ModelFileError

            raise ModelFileError("not a GGUF model")

    def _load(self, path: str, config: InferenceConfig, threads: int) -> StandIn:
        model = StandIn(path, self.log, self.gates)
        self.models.append(model)
        return model

    def job(self, rid: str, priority: Priority = "interactive", uid: int = 1000, **kw: Any) -> Job:
        return Job(
            request_id=rid,
            priority=priority,
            method="inference.generate",
            uid=uid,
            params=GenerationParams(),
            prompt=kw.pop("prompt", "hi"),
        )

    def hold(self, rid: str) -> threading.Event:
        self.gates[rid] = threading.Event()
        return self.gates[rid]

    async def until(self, predicate: Any) -> None:
        # Polled: the state is written by the worker thread, which has no event to set.
        with anyio.fail_after(DEADLINE):
            while True:
                if predicate():
                    return
                await anyio.sleep(0.005)


async def outcome(job: Job) -> dict[str, Any]:
    with anyio.fail_after(DEADLINE):
        while not job.finished:
            await job.wait()
            job.take_pieces()
    return job.outcome()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    h.engine.start()
    await h.until(lambda: h.engine.state == "ready")
    yield h
    for gate in h.gates.values():
        gate.set()
    with anyio.fail_after(DEADLINE):
        await h.engine.stop()


async def test_interactive_requests_run_before_background_ones(harness: Harness) -> None:
    engine = harness.engine
    release = harness.hold("a")
    a = harness.job("a")
    assert engine.submit(a) == 1
    await harness.until(lambda: harness.log == ["first:a"])
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
    release.set()
    for job in (a, b, c, d):
        assert (await outcome(job))["text"] == "hello world"
    assert harness.log == ["first:a", "first:c", "first:d", "first:b"]
    assert engine.status()["totals"]["completed"] == 4


async def test_only_the_owner_or_an_admin_may_cancel(harness: Harness) -> None:
    engine = harness.engine
    harness.hold("a")
    engine.submit(harness.job("a", uid=1000))
    await harness.until(lambda: harness.log == ["first:a"])
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


async def test_a_model_change_drains_the_queue_first_and_is_single_flight(
    harness: Harness,
) -> None:
    engine = harness.engine
    release = harness.hold("a")
    a, b = harness.job("a"), harness.job("b")
    engine.submit(a)
    engine.submit(b)
    await harness.until(lambda: harness.log == ["first:a"])
    async with anyio.create_task_group() as tg:
        loaded: list[dict[str, Any]] = []

        async def load() -> None:
            loaded.append(await engine.load("second"))

        tg.start_soon(load)
        await harness.until(lambda: engine.state == "loading")
        with pytest.raises(Busy):
            await engine.load("third")
        with pytest.raises(ModelNotLoaded) as info:
            engine.submit(harness.job("late"))
        assert info.value.data["state"] == "loading"
        release.set()
    assert loaded[0]["state"] == "ready"
    assert loaded[0]["model"]["name"] == "second"
    # Both queued requests ran on the old model, then it was replaced.
    assert harness.log == ["first:a", "first:b", "close first"]
    assert (await outcome(b))["stop_reason"] == "stop"


async def test_a_bad_file_keeps_the_running_model(harness: Harness) -> None:
    engine = harness.engine
    with pytest.raises(Unavailable) as info:
        await engine.load("bad")
    assert "not a GGUF model" in info.value.message
    status = engine.status()
    assert status["state"] == "ready"
    assert status["model"]["name"] == "first"
    assert status["last_error"]["reason"] == "not a GGUF model"
    job = harness.job("after")
    engine.submit(job)
    assert (await outcome(job))["text"] == "hello world"


async def test_one_failing_request_does_not_stop_the_worker(harness: Harness) -> None:
    engine = harness.engine
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
    assert engine.status()["totals"]["failed"] == 2


async def test_stop_cancels_waiting_requests() -> None:
    h = Harness()
    h.engine.start()
    await h.until(lambda: h.engine.state == "ready")
    release = h.hold("a")
    running, waiting = h.job("a"), h.job("b")
    h.engine.submit(running)
    h.engine.submit(waiting)
    await h.until(lambda: h.log == ["first:a"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.engine.stop)
        assert (await outcome(waiting))["stop_reason"] == "cancelled"
        release.set()
    assert (await outcome(running))["stop_reason"] == "cancelled"
    assert h.log[-1] == "close first"
