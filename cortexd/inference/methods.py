"""Socket methods of the inference feature and its `install(daemon)` hook.

`inference.generate` / `inference.chat` queue a job and wait for it; with
`stream: true` the first stream message carries the server `request_id` and
the queue position, the following ones the text as it is generated. The
handler's own deadline (`inference.request_timeout`) ends the request with
`stop_reason: timeout` and the partial text; the method's server deadline is
set far beyond it so the generic 5 s deadline never cuts inference short.
If the handler is cancelled (the client went away) the job is cancelled
with it, inside prompt processing too. When the daemon begins to stop, every
queued and running request is answered SHUTTING_DOWN at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from cortexd.config.schema import Config
from cortexd.inference.alerting import AlertSink
from cortexd.inference.engine import Engine, Viewer
from cortexd.inference.job import GenerationParams, Job
from cortexd.inference.modelfile import model_dirs
from cortexd.protocol import Timeout
from cortexd.server import Call, Method, Param
from cortexd.server.registry import between

if TYPE_CHECKING:
    from cortexd.runtime import Runtime

# Longest possible inference.request_timeout plus room for the handler's own
# grace period: the server-level deadline must never fire first.
METHOD_TIMEOUT = 86400.0 + 120.0
# After the deadline the runner stops within a token or a graph node; one
# that does not is killed by the engine (KILL_GRACE, 10 s). This only bounds
# the wait if even that fails.
STOP_GRACE = 30.0
# model.load may wait for the queue to drain first.
LOAD_TIMEOUT = 3600.0
MAX_TOKENS_LIMIT = 1 << 20
SEED_LIMIT = 2**32
DEFAULTS = GenerationParams()


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _temperature(value: float) -> str | None:
    return None if 0.0 <= value <= 10.0 else "must be between 0 and 10"


def _top_p(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be greater than 0 and at most 1"


def _seed(value: int) -> str | None:
    return None if 0 <= value < SEED_LIMIT else f"must be between 0 and {SEED_LIMIT - 1}"


def _stop(value: list[str]) -> str | None:
    return None if len(value) <= 16 else "at most 16 stop strings"


def _messages(value: list[Any]) -> str | None:
    if not value:
        return "must hold at least one message"
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            return f"item {i} must be an object with role and content"
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            return f"item {i}: role must be a non-empty string"
        if not isinstance(content, str):
            return f"item {i}: content must be a string"
        if set(message) - {"role", "content"}:
            return f"item {i}: only role and content are accepted"
    return None


SAMPLING = (
    Param("max_tokens", int, default=DEFAULTS.max_tokens, check=between(1, MAX_TOKENS_LIMIT)),
    Param("temperature", float, default=DEFAULTS.temperature, check=_temperature),
    Param("top_p", float, default=DEFAULTS.top_p, check=_top_p),
    Param("stop", list, default=[], items=str, check=_stop),
    Param("seed", int, check=_seed),
    Param("stream", bool, default=False),
    Param("priority", str, default="interactive", choices=("interactive", "background")),
)


def sampling(params: dict[str, Any]) -> GenerationParams:
    """The sampling settings from bound params."""
    return GenerationParams(
        max_tokens=params["max_tokens"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        stop=tuple(params["stop"]),
        seed=params["seed"],
    )


class InferenceComponent:
    """The engine as a daemon `Component`: status, start, reload, stop.

    `stopping` returns once the daemon begins to shut down: the engine then
    answers its requests SHUTTING_DOWN while their connections are still open.
    """

    name = "inference"

    def __init__(
        self, engine: Engine, stopping: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.engine = engine
        self._stopping = stopping

    def state(self) -> dict[str, Any]:
        return self.engine.summary()

    async def start(self, tg: TaskGroup) -> None:
        await self.engine.start(tg)
        if self._stopping is not None:
            tg.start_soon(self._answer_at_shutdown, self._stopping)

    async def _answer_at_shutdown(self, stopping: Callable[[], Awaitable[None]]) -> None:
        await stopping()
        self.engine.shutting_down()

    def apply_config(self, config: Config) -> None:
        self.engine.apply_config(config.inference, model_dirs(config))

    async def stop(self) -> None:
        await self.engine.stop()


async def run_job(engine: Engine, call: Call, job: Job, stream: bool) -> dict[str, Any]:
    """Queue `job`, stream its text if asked, and return its final result.

    Raises whatever `Engine.submit` raises (QueueFull, ModelNotLoaded) and the
    job's own error (e.g. INVALID_PARAMS for an over-long prompt). On
    cancellation the job is cancelled too.
    """
    position = engine.submit(job, privileged=call.is_admin)
    try:
        if stream:
            await call.stream(
                {"request_id": job.request_id, "position": position, "queued": len(engine.queue)}
            )
        deadline = job.deadline
        timed_out = False
        while True:
            with anyio.move_on_after(max(0.0, deadline - engine.now())):
                await job.wait()
            pieces = job.take_pieces()
            if pieces and stream:
                await call.stream({"text": "".join(pieces)})
            if job.finished:
                return job.outcome()
            if engine.now() >= deadline:
                if timed_out:
                    # The worker did not stop within the grace period (it is stuck in
                    # llama.cpp): answer now; the job is cancelled on the way out.
                    raise Timeout(engine.config.request_timeout)
                timed_out = True
                engine.cancel_job(job, "timeout")
                deadline += STOP_GRACE
    finally:
        engine.forget(job)


def methods(engine: Engine) -> list[Method]:
    """The inference methods bound to `engine` (`inference.explain` lives in cortexd.explain)."""

    def new_job(call: Call, **kwargs: Any) -> Job:
        return Job(
            request_id=call.request_id,
            priority=call.params["priority"],
            method=call.method,
            uid=call.peer.uid,
            params=sampling(call.params),
            **kwargs,
        )

    async def generate(call: Call) -> dict[str, Any]:
        job = new_job(call, prompt=call.params["prompt"])
        return await run_job(engine, call, job, call.params["stream"])

    async def chat(call: Call) -> dict[str, Any]:
        job = new_job(call, messages=list(call.params["messages"]))
        return await run_job(engine, call, job, call.params["stream"])

    async def cancel(call: Call) -> dict[str, Any]:
        return engine.cancel(call.params["request_id"], call.peer.uid, call.is_admin)

    def model_status(call: Call) -> dict[str, Any]:
        return engine.status(Viewer(call.peer.uid, call.is_admin))

    async def model_load(call: Call) -> dict[str, Any]:
        return await engine.load(call.params["path"])

    async def model_unload(call: Call) -> dict[str, Any]:
        return await engine.unload()

    return [
        Method(
            "inference.generate",
            generate,
            params=(Param("prompt", str, required=True, check=_non_empty), *SAMPLING),
            aliases=("inference",),
            timeout=METHOD_TIMEOUT,
            summary="complete a prompt with the local model",
        ),
        Method(
            "inference.chat",
            chat,
            params=(Param("messages", list, required=True, check=_messages), *SAMPLING),
            timeout=METHOD_TIMEOUT,
            summary="answer chat messages using the model's chat template",
        ),
        Method(
            "inference.cancel",
            cancel,
            params=(Param("request_id", str, required=True),),
            summary="cancel a queued or running inference request",
        ),
        Method("model.status", model_status, inline=True, summary="model state and queue"),
        Method(
            "model.load",
            model_load,
            params=(Param("path", str, required=True, check=_non_empty),),
            access="admin",
            timeout=LOAD_TIMEOUT,
            summary="load a GGUF model (queued requests finish first)",
        ),
        Method(
            "model.unload",
            model_unload,
            access="admin",
            timeout=LOAD_TIMEOUT,
            summary="free the model (queued requests finish first)",
        ),
    ]


def install(daemon: Runtime, alerts: AlertSink | None = None) -> Engine:
    """Add the inference engine to `daemon`: its component and its methods.

    `alerts` hears about runner crashes; it must be started before the engine
    (installed first).
    """
    config = daemon.config
    engine = Engine(config.inference, model_dirs=model_dirs(config), alerts=alerts)
    daemon.components.append(InferenceComponent(engine, daemon.wait_stopping))
    daemon.registry.add(methods(engine))
    return engine
