"""The inference engine: the daemon's side of a supervised runner process.

The model lives in a runner child process (`worker.py`); the daemon keeps
what clients see: the bounded queue, jobs and request ids, streaming,
cancellation, statistics and `model.status`. One supervisor task owns the
runner: it starts it, sends it one request at a time, relays cancels, and
stops it. Everything here runs on the event loop, so no state is shared
with another thread.

Model changes drain: once `model.load` or `model.unload` is accepted, new
requests get MODEL_NOT_LOADED (state `loading`/`unloading`) while those
already queued finish on the old model; then the change runs. A load starts
a new runner next to the old one and switches only once it is ready, so a
model that fails to load leaves the previous one serving.

A runner that dies (a llama.cpp abort, a segfault, an OOM kill) fails the
request it was running with UNAVAILABLE naming the signal or exit status and
its last stderr lines; the queued requests wait for a restart, which comes
after a backoff (`inference.restart_backoff_seconds`, doubling up to
`inference.restart_backoff_max_seconds`). After `inference.max_load_failures`
failed starts in a row the engine gives up until `model.load` or a config
reload. Each crash raises an alert that resolves when a runner serves the
model again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup

from cortexd.config.schema import InferenceConfig
from cortexd.inference.alerting import AlertSink
from cortexd.inference.exits import RUNNER_GONE
from cortexd.inference.frames import Frame, FrameError
from cortexd.inference.job import Job, StopReason, empty_result, result_from
from cortexd.inference.modelfile import ModelRef, check_allowed
from cortexd.inference.queue import RequestQueue
from cortexd.inference.stats import Totals, rss_bytes
from cortexd.inference.supervisor import ModelState, RunnerSlot
from cortexd.protocol import (
    Busy,
    CortexError,
    InvalidParams,
    ModelNotLoaded,
    NotFound,
    PermissionDenied,
    ShuttingDown,
    Unavailable,
    error_from_wire,
)

log = logging.getLogger(__name__)

MAX_LISTED = 100
# A runner that has not stopped a cancelled request this long after the
# cancel frame is stuck inside llama.cpp: it is killed (and restarted).
KILL_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks for `model.status`: readers see only their own requests in detail."""

    uid: int
    is_admin: bool


@dataclass(eq=False)
class _Control:
    """A pending `model.load` or `model.unload`; completed by the supervisor."""

    kind: Literal["load", "unload"]
    ref: ModelRef | None = None
    previous: ModelState = "not_configured"
    done: anyio.Event = field(default_factory=anyio.Event)
    error: CortexError | None = None

    def complete(self, error: CortexError | None) -> None:
        """The outcome; the first one stands (a shutdown may answer before the change ends)."""
        if not self.done.is_set():
            self.error = error
            self.done.set()


class Engine:
    """Queued inference over one model served by one supervised runner process."""

    def __init__(
        self,
        config: InferenceConfig,
        *,
        model_dirs: Sequence[str] = (),
        alerts: AlertSink | None = None,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`model_dirs` bounds `model.load`; `alerts` hears about crashes;
        `command` starts a runner (default: this interpreter running the
        worker module; tests give a stand-in speaking the same frames)."""
        self.config = config
        self.model_dirs = tuple(model_dirs)
        self.queue: RequestQueue[Job] = RequestQueue(
            config.queue_depth, config.max_queued_per_user, config.reserved_admin_slots
        )
        self.totals = Totals()
        self._clock = clock
        self.slot = RunnerSlot(
            config,
            alerts=alerts,
            command=command,
            env=env,
            clock=clock,
            on_frame=self._on_frame,
            on_crash=self._on_crash,
            on_give_up=self._on_give_up,
            on_change=self._notify,
        )
        self._control: _Control | None = None
        self._current: Job | None = None
        self._jobs: dict[str, Job] = {}
        self._last_active = clock()
        self._closing = False
        self._wake = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def state(self) -> ModelState:
        return self.slot.state

    def now(self) -> float:
        """The engine's clock (monotonic seconds), which job deadlines use."""
        return self._clock()

    async def start(self, tg: TaskGroup) -> None:
        """Start the supervisor and, if a model is configured, begin loading it."""
        self.slot.start(tg)
        tg.start_soon(self._supervise)

    def apply_config(self, config: InferenceConfig, model_dirs: Sequence[str]) -> None:
        """Take live settings; a model the engine gave up on gets a new try.

        Settings of the runner itself (n_ctx, threads, memory limit, nice)
        apply from its next start.
        """
        self.config = self.slot.config = config
        self.model_dirs = tuple(model_dirs)
        self.queue.resize(
            config.queue_depth, config.max_queued_per_user, config.reserved_admin_slots
        )
        self.slot.retry_after_reload()
        self._notify()

    def shutting_down(self) -> None:
        """The daemon is stopping: answer every queued and running request
        with SHUTTING_DOWN now, so each gets its answer before its connection
        closes, and start no more work."""
        self._closing = True
        for job in self.queue.drain():
            job.stop_requested = "cancelled"
            job.fail(ShuttingDown())
        current = self._current
        if current is not None:
            current.stop_requested = current.stop_requested or "cancelled"
            current.fail(ShuttingDown())
        control, self._control = self._control, None
        if control is not None:
            control.complete(ShuttingDown())
        self._notify()

    async def stop(self) -> None:
        """Cancel every request and end the runner (SIGKILL if it does not exit)."""
        self._closing = True
        now = self._clock()
        for job in self.queue.drain():
            job.stop_requested = "cancelled"
            job.finish(empty_result(job, "cancelled", now))
        if self._scope is not None:
            self._scope.cancel()
        await self.slot.close()
        current, self._current = self._current, None
        if current is not None:
            current.fail(ShuttingDown())

    def _notify(self) -> None:
        self._wake.set()

    # -- model changes -----------------------------------------------------

    def _request(self, control: _Control, state: ModelState) -> None:
        if self._closing:
            raise ShuttingDown()
        slot = self.slot
        if self._control is not None or slot.state in ("loading", "unloading"):
            raise Busy(
                f"a model {self._control.kind if self._control else 'change'} is already "
                "in progress",
                state=slot.state,
            )
        control.previous = slot.state
        self._control = control
        slot.state, slot.reason = state, None
        self._notify()

    async def load(self, path: str) -> dict[str, Any]:
        """Load `path` (after queued requests finish); returns `model.status`.

        Raises:
            PermissionDenied: `path` is not inside `inference.model_dirs`.
            Busy: another load or unload is in progress.
            Unavailable: the model could not be loaded (data: path, reason,
                state, and how the runner ended if it died); the previous
                model, if any, keeps serving.
        On cancellation the load still completes in the background.
        """
        ref = ModelRef(check_allowed(path, self.model_dirs), "load")
        control = _Control("load", ref)
        self._request(control, "loading")
        await control.done.wait()
        if control.error is not None:
            raise control.error
        return self.status()

    async def unload(self) -> dict[str, Any]:
        """End the runner after queued requests finish; its memory goes back to the OS.

        Raises:
            Busy: another load or unload is in progress.
            ModelNotLoaded: there is no model to unload.
        """
        if self.slot.state not in ("ready", "idle"):
            raise ModelNotLoaded(self.slot.state, self.slot.reason)
        control = _Control("unload")
        self._request(control, "unloading")
        await control.done.wait()
        if control.error is not None:
            raise control.error
        return self.status()

    async def _change(self, control: _Control) -> None:
        try:
            if control.kind == "unload":
                await self.slot.unload("unloaded", "unloaded by model.unload")
                self._fail_queued(ModelNotLoaded("unloaded", self.slot.reason))
                control.complete(None)
                return
            assert control.ref is not None
            outcome = await self.slot.load(control.ref, control.previous)
            if isinstance(outcome, Unavailable):
                control.complete(outcome)
                return
            self._loaded(outcome)
            control.complete(None)
        finally:
            if self._control is control:
                self._control = None

    def _loaded(self, load_ns: int) -> None:
        self._last_active = self._clock()
        for job in self.queue.snapshot():
            job.load_ns = load_ns

    # -- requests ------------------------------------------------------------

    def submit(self, job: Job, *, privileged: bool = True) -> int:
        """Queue `job`; returns its position (1 = next to run).

        `privileged` (root or an admin) is not held to the per-user share and
        may take the places reserved for admins.

        Raises:
            ShuttingDown: the daemon is stopping.
            ModelNotLoaded: no model ready (data: state, reason).
            QueueFull: no place left for this caller (data: depth, scope).
        """
        if self._closing:
            raise ShuttingDown()
        slot = self.slot
        if self._control is None and slot.state == "idle":
            slot.wake()  # unloaded after keep_alive: this request brings it back
        if self._control is not None or not (slot.state == "ready" or slot.accepting):
            raise ModelNotLoaded(slot.state, slot.reason)
        job.submitted = self._clock()
        job.deadline = job.submitted + self.config.request_timeout
        try:
            position = self.queue.put_nowait(job, privileged=privileged)
        except CortexError:
            self.totals.add(rejected_full=1)
            raise
        self._jobs[job.request_id] = job
        self._notify()
        return position

    def forget(self, job: Job) -> None:
        """The handler is done with `job`; if it had not finished, cancel it."""
        if not job.finished:
            self.cancel_job(job, "cancelled")
        self._jobs.pop(job.request_id, None)

    def cancel_job(self, job: Job, reason: StopReason) -> None:
        """Stop `job`: a waiting one ends now, a running one as soon as the runner sees it."""
        if job.stop_requested is None:
            job.stop_requested = reason
        if self.queue.remove(job.request_id) is not None:
            self._count_stop(reason)
            job.finish(empty_result(job, reason, self._clock()))
        elif job is self._current:
            self._notify()

    def cancel(self, request_id: str, uid: int, is_admin: bool) -> dict[str, Any]:
        """`inference.cancel`: the owner (same uid) or an admin may cancel.

        Raises:
            NotFound: no such queued or running request.
            PermissionDenied: the request belongs to another user.
        """
        job = self._jobs.get(request_id)
        if job is None or job.finished:
            raise NotFound(f"no queued or running request {request_id!r}", request_id=request_id)
        if job.uid != uid and not is_admin:
            raise PermissionDenied(
                f"request {request_id} belongs to another user", request_id=request_id
            )
        phase = job.phase
        self.cancel_job(job, "cancelled")
        return {"request_id": request_id, "cancelled": True, "phase": phase}

    def position(self, request_id: str) -> int | None:
        return self.queue.position(request_id)

    def _fail_queued(self, error: CortexError) -> None:
        for job in self.queue.drain():
            job.fail(error)

    # -- status ----------------------------------------------------------

    def status(self, viewer: Viewer | None = None) -> dict[str, Any]:
        """`model.status`: state, model, runner, queue, in-flight request, totals.

        A viewer who is not an admin sees the details (ids, methods, phases)
        of their own requests only; the others appear in `hidden` as counts.
        """
        now = self._clock()
        slot = self.slot
        waiting = self.queue.snapshot()
        current = self._current

        def visible(job: Job) -> bool:
            return viewer is None or viewer.is_admin or job.uid == viewer.uid

        shown = [job.summary(now, i + 1) for i, job in enumerate(waiting) if visible(job)]
        in_flight = current.summary(now) if current is not None and visible(current) else None
        return {
            "state": slot.state,
            "reason": slot.reason,
            "failed_at": slot.failed_at if slot.state == "failed" else None,
            "path": slot.shown_path(),
            "model": slot.describe,
            "last_error": slot.last_error,
            "queue_depth": len(waiting),
            "queue_limit": self.queue.depth,
            "queue": shown[:MAX_LISTED],
            "in_flight": in_flight,
            "hidden": {
                "queued": len(waiting) - len(shown),
                "in_flight": int(current is not None and in_flight is None),
            },
            "share": {
                "max_queued_per_user": self.queue.per_user,
                "reserved_admin_slots": self.queue.reserved,
            },
            "request_timeout": self.config.request_timeout,
            "keep_alive": self.config.keep_alive,
            "totals": self.totals.snapshot(),
            "rss_bytes": rss_bytes(),
            "runner": slot.status(),
        }

    def runner_status(self) -> dict[str, Any]:
        """The runner's pid, memory, restarts, crashes and last exit (for metrics)."""
        return self.slot.status()

    def summary(self) -> dict[str, Any]:
        """The short form for the daemon's `status` (no request ids: readers see it)."""
        slot = self.slot
        model = slot.describe or {}
        current = self._current
        runner = slot.runner
        last = slot.last_exit
        return {
            "state": slot.state,
            "reason": slot.reason,
            "model": model.get("name"),
            "size_bytes": model.get("size_bytes"),
            "n_ctx": model.get("n_ctx"),
            "queue_depth": len(self.queue),
            "in_flight": current.phase if current is not None else None,
            "runner_pid": runner.pid if runner is not None else None,
            "runner_rss_bytes": runner.rss_bytes() if runner is not None else None,
            "restarts": slot.restarts,
            "last_exit": f"{last.how} while {last.during}" if last is not None else None,
            "totals": self.totals.snapshot(),
        }

    # -- the supervisor ----------------------------------------------------

    async def _supervise(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            while True:
                wake = self._wake = anyio.Event()
                delay = await self._step()
                if delay is not None:
                    with anyio.move_on_after(delay):
                        await wake.wait()

    async def _step(self) -> float | None:
        """Do the next thing due; None if it did something, else how long to wait."""
        now = self._clock()
        job = self._current
        if job is not None:
            return await self._tend(job, now)
        if self._closing:
            return math.inf
        slot = self.slot
        control = self._control
        if control is not None and (not len(self.queue) or slot.runner is None):
            await self._change(control)
            return None
        runner = slot.runner
        if runner is None:
            if slot.want and slot.target is not None and control is None:
                if now < slot.restart_at:
                    return slot.restart_at - now
                load_ns = await slot.bring_up()
                if load_ns is not None:
                    self._loaded(load_ns)
                return None
            return math.inf
        job = self.queue.pop()
        if job is not None:
            await self._dispatch(job, now)
            return None
        keep = self.config.keep_alive
        if keep > 0 and control is None:
            idle = now - self._last_active
            if idle >= keep:
                log.info("ending the inference runner after %gs idle (inference.keep_alive)", keep)
                await slot.unload(
                    "idle", f"unloaded after {keep:g}s idle; the next request loads it again"
                )
                return None
            return keep - idle
        return math.inf

    async def _tend(self, job: Job, now: float) -> float:
        """The running job: relay its cancel; kill a runner that ignores it."""
        runner = self.slot.runner
        if runner is None:
            return math.inf
        if job.stop_requested is not None and job.cancel_sent is None:
            job.cancel_sent = now
            frame = {"op": "cancel", "id": job.request_id, "reason": job.stop_requested}
            # A runner that is going cannot take it; its end fails the job.
            with contextlib.suppress(*RUNNER_GONE):
                await runner.send(frame)
        if job.cancel_sent is None:
            return math.inf
        left = job.cancel_sent + KILL_GRACE - now
        if left > 0:
            return left
        self.slot.kill(
            f"the runner did not stop request {job.request_id} within {KILL_GRACE:g}s "
            "of its cancel; it was killed"
        )
        return math.inf

    async def _dispatch(self, job: Job, now: float) -> None:
        runner = self.slot.runner
        assert runner is not None
        self.totals.add(requests=1)
        job.started = now
        self._current = job
        runner.activity = "prompt"
        frame: Frame = {
            "op": "run",
            "id": job.request_id,
            "sampling": job.params.frame(),
            "timeout_s": max(0.0, job.deadline - now),
        }
        if job.messages is not None:
            frame["messages"] = job.messages
        else:
            frame["prompt"] = job.prompt
        try:
            await runner.send(frame)
        except FrameError:
            self.totals.add(failed=1)
            self._job_ended(job)
            job.fail(InvalidParams("prompt", "is too large to hand to the runner"))
        except RUNNER_GONE:
            pass  # the runner is going; its end fails the job

    def _on_frame(self, frame: Frame) -> None:
        job = self._current
        if job is None or frame.get("id") != job.request_id:
            log.debug("runner frame %s for a request no longer running", frame.get("op"))
            return
        try:
            self._apply(job, frame)
        except (KeyError, TypeError, ValueError) as exc:
            self.slot.kill(f"the runner sent a malformed {frame.get('op')} frame ({exc})")

    def _apply(self, job: Job, frame: Frame) -> None:
        op = frame["op"]
        if op == "text":
            text = frame["text"]
            if not isinstance(text, str):
                raise TypeError("text is not a string")
            job.generated = int(frame["generated"])
            job.deliver_text(text)
        elif op == "phase":
            phase = frame["phase"]
            if phase not in ("prompt", "generating"):
                raise ValueError(f"unknown phase {phase!r}")
            job.phase = phase
            job.prompt_tokens = int(frame["prompt_tokens"])
            job.prompt_evaluated = int(frame["prompt_evaluated"])
            if self.slot.runner is not None:
                self.slot.runner.activity = phase
        elif op == "done":
            result = result_from(job, frame["outcome"], self._clock())
            self.totals.record(result)
            self.slot.served()
            self._job_ended(job)
            job.finish(result)
        elif op == "error":
            error = error_from_wire(dict(frame["error"]))
            self.totals.add(failed=1)
            self._job_ended(job)
            job.fail(error)
        else:
            raise ValueError(f"unknown op {op!r}")

    def _job_ended(self, job: Job) -> None:
        job.phase = "done"
        self._current = None
        self._last_active = self._clock()
        runner = self.slot.runner
        if runner is not None:
            runner.activity = "idle"
        self._notify()

    def _on_crash(self, error: Unavailable) -> None:
        job, self._current = self._current, None
        if job is not None:
            job.phase = "done"
            self.totals.add(failed=1)
            error.data["request_id"] = job.request_id
            job.fail(error)

    def _on_give_up(self, error: Unavailable) -> None:
        self._fail_queued(error)

    def _count_stop(self, reason: StopReason) -> None:
        self.totals.add(**{"timed_out" if reason == "timeout" else "cancelled": 1})
