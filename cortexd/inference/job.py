"""One inference request as it travels from the socket to the runner and back.

A `Job` lives on the event loop only: the engine updates its phase and
progress from the runner's frames and delivers its text and outcome; the
connection's handler waits on it and streams what arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from cortexd.inference.queue import Priority
from cortexd.protocol import CortexError

StopReason = Literal["stop", "length", "cancelled", "timeout"]
Phase = Literal["queued", "loading", "prompt", "generating", "done"]
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling settings of one request (validated at the socket edge)."""

    max_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Not taken from the socket yet; the runner already applies them.
    repeat_penalty: float = 1.0
    grammar: str | None = None

    def frame(self) -> dict[str, Any]:
        """The `sampling` member of a `run` frame."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": list(self.stop),
            "seed": self.seed,
            "repeat_penalty": self.repeat_penalty,
            "grammar": self.grammar,
        }


@dataclass(eq=False)
class Job:
    """A queued or running request; see the module docstring for who writes what."""

    request_id: str
    priority: Priority
    method: str
    uid: int
    params: GenerationParams
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    submitted: float = field(default_factory=time.monotonic)
    deadline: float = 0.0
    stop_requested: StopReason | None = None
    # When the cancel frame went to the runner (engine clock).
    cancel_sent: float | None = None
    # Progress, from the runner's frames.
    phase: Phase = "queued"
    started: float | None = None  # when the run frame went to the runner
    prompt_tokens: int = 0
    prompt_evaluated: int = 0
    generated: int = 0
    load_ns: int = 0
    _pieces: list[str] = field(default_factory=list)
    _parts: list[str] = field(default_factory=list)
    _event: anyio.Event = field(default_factory=anyio.Event)
    _result: dict[str, Any] | None = None
    _error: CortexError | None = None

    @property
    def finished(self) -> bool:
        return self._result is not None or self._error is not None

    def deliver_text(self, text: str) -> None:
        """Queue streamed text for the handler (and keep it for the result)."""
        if not self.finished:
            self._pieces.append(text)
            self._parts.append(text)
            self._event.set()

    def finish(self, result: dict[str, Any]) -> None:
        """The final result (also for cancelled and timed-out requests)."""
        if not self.finished:
            self._result = result
            self._event.set()

    def fail(self, error: CortexError) -> None:
        """The request failed as a whole."""
        if not self.finished:
            self._error = error
            self._event.set()

    def take_pieces(self) -> list[str]:
        pieces, self._pieces = self._pieces, []
        return pieces

    async def wait(self) -> None:
        """Wait until there is text to stream or an outcome; cancellable."""
        if self._pieces or self.finished:
            return
        await self._event.wait()
        self._event = anyio.Event()

    def outcome(self) -> dict[str, Any]:
        """The final result, or raise the request's error."""
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def summary(self, now: float, position: int | None = None) -> dict[str, Any]:
        """A JSON-ready line for queue listings."""
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "priority": self.priority,
            "uid": self.uid,
            "phase": self.phase,
            "age_ms": round((now - self.submitted) * 1000, 1),
        }
        if position is not None:
            out["position"] = position
        if self.phase in ("prompt", "generating"):
            out["prompt_tokens"] = self.prompt_tokens
            out["generated_tokens"] = self.generated
        return out


def empty_result(job: Job, reason: StopReason, now: float) -> dict[str, Any]:
    """The result of a request that ended before it reached the model."""
    total = now - job.submitted
    return {
        "request_id": job.request_id,
        "text": "",
        "stop_reason": reason,
        "cancelled_in": "queue",
        "prompt_tokens": 0,
        "prompt_eval_count": 0,
        "eval_count": 0,
        "total_duration": int(total * NS_PER_S),
        "load_duration": job.load_ns,
        "prompt_eval_duration": 0,
        "eval_duration": 0,
        "queue_ms": round(total * 1000, 3),
        "ttft_ms": None,
        "total_ms": round(total * 1000, 3),
        "tokens_per_second": 0.0,
    }


def result_from(job: Job, outcome: dict[str, Any], now: float) -> dict[str, Any]:
    """The final result of a job the runner ran, from its `done` outcome.

    The runner measures durations from when it received the request; the
    engine's clock places that at `job.started`, so queue and first-token
    times are the daemon's (as a client sees them) and the rest the runner's.
    """
    started = job.started if job.started is not None else now
    generated = int(outcome["generated"])
    prompt_s = float(outcome["prompt_s"])
    eval_s = float(outcome["eval_s"])
    first_s = outcome.get("first_s")
    reason: StopReason = outcome["stop_reason"]
    queue_s = started - job.submitted
    total_s = now - job.submitted
    # The first token is sampled at the end of prompt evaluation, so the
    # generation rate counts the tokens after it.
    rate = (generated - 1) / eval_s if generated > 1 and eval_s > 0 else 0.0
    ttft = (
        round((started + float(first_s) - job.submitted) * 1000, 3) if first_s is not None else None
    )
    result: dict[str, Any] = {
        "request_id": job.request_id,
        "text": "".join(job._parts) + str(outcome.get("tail") or ""),
        "stop_reason": reason,
        "prompt_tokens": int(outcome["prompt_tokens"]),
        "prompt_eval_count": int(outcome["prompt_evaluated"]),
        "eval_count": generated,
        "total_duration": int(total_s * NS_PER_S),
        "load_duration": job.load_ns,
        "prompt_eval_duration": int(prompt_s * NS_PER_S),
        "eval_duration": int(eval_s * NS_PER_S),
        "queue_ms": round(queue_s * 1000, 3),
        "ttft_ms": ttft,
        "total_ms": round(total_s * 1000, 3),
        "tokens_per_second": round(rate, 2),
    }
    if reason in ("cancelled", "timeout"):
        result["cancelled_in"] = "prompt" if first_s is None else "generation"
    return result
