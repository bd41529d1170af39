"""One inference request as it travels from the socket to the worker and back.

A `Job` is shared by two threads with a strict split: the event loop owns the
delivery side (`_pieces`, `_event`, the outcome) and only the loop touches it
— the worker schedules `deliver_text`, `finish` and `fail` to run on the loop
(see `Engine._post` and `Engine._to_loop`); the worker owns `phase` and the
progress counters, which the loop only reads for status. `stop_requested` is
the one field the loop writes and the worker reads (a single reference
assignment, atomic under the GIL).
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
    # Written by the worker, read by status.
    phase: Phase = "queued"
    started: float | None = None
    prompt_tokens: int = 0
    prompt_evaluated: int = 0
    generated: int = 0
    load_ns: int = 0
    # Event-loop side only.
    _pieces: list[str] = field(default_factory=list)
    _event: anyio.Event = field(default_factory=anyio.Event)
    _result: dict[str, Any] | None = None
    _error: CortexError | None = None

    @property
    def finished(self) -> bool:
        return self._result is not None or self._error is not None

    # -- event-loop side -------------------------------------------------

    def deliver_text(self, text: str) -> None:
        """Loop thread: queue streamed text for the handler."""
        if not self.finished:
            self._pieces.append(text)
            self._event.set()

    def finish(self, result: dict[str, Any]) -> None:
        """Loop thread: the final result (also for cancelled and timed-out requests)."""
        if not self.finished:
            self._result = result
            self._event.set()

    def fail(self, error: CortexError) -> None:
        """Loop thread: the request failed as a whole."""
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
