"""The inference engine: one worker thread, one queue, one model.

The worker thread is the only code that touches the `LoadedModel` (llama.cpp
is not thread-safe), and it also loads and unloads it, so a model change can
never race a running request. The event loop talks to it through the
thread-safe `RequestQueue` and a single pending control action (load,
unload, exit); the worker reports back by scheduling calls on the loop
(`anyio.from_thread.run_sync` for outcomes, a queued call for streamed text),
so the loop-side `Job` state is only ever touched by the loop.

Model changes drain: once `model.load` or `model.unload` is accepted, new
requests get MODEL_NOT_LOADED (state `loading`/`unloading`) while those
already queued finish on the old model; then the change runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.lowlevel import EventLoopToken, current_token

from cortexd.config.schema import InferenceConfig
from cortexd.inference.gguf import ModelFileError, check_fits, inspect
from cortexd.inference.job import NS_PER_S, Job, StopReason, empty_result
from cortexd.inference.queue import RequestQueue
from cortexd.inference.stats import Totals, rss_bytes
from cortexd.protocol import (
    Busy,
    CortexError,
    InternalError,
    ModelNotLoaded,
    NotFound,
    PermissionDenied,
    Unavailable,
)

log = logging.getLogger(__name__)

ModelState = Literal[
    "not_configured", "loading", "ready", "failed", "unloading", "unloaded", "idle"
]
JOIN_TIMEOUT = 10.0
NOT_CONFIGURED = (
    "no model is configured: set inference.model_path, start cortexd with --model PATH, "
    "or load one with model.load"
)
MAX_LISTED = 100


def expand(path: str) -> str:
    """`~` expansion for model paths (the seed's config used `~/.cortex/models/...`)."""
    return os.path.expanduser(path)


def default_threads(configured: int) -> int:
    """`n_threads` 0 means every core but one, so the event loop keeps a core."""
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(eq=False)
class _Control:
    """A pending model change or the worker's exit; completed on the loop."""

    kind: Literal["load", "unload", "exit"]
    path: str = ""
    drain: bool = True
    done: anyio.Event = field(default_factory=anyio.Event)
    error: str | None = None

    def complete(self, error: str | None) -> None:
        self.error = error
        self.done.set()


class Engine:
    """Queued inference over one model owned by one worker thread."""

    def __init__(
        self,
        config: InferenceConfig,
        *,
        loader: Callable[[str, InferenceConfig, int], Any] | None = None,
        validate: Callable[[str, InferenceConfig], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`loader` and `validate` replace the llama.cpp loader and the file checks
        (tests use a stand-in model); both run on the worker thread."""
        self.config = config
        self.queue: RequestQueue[Job] = RequestQueue(config.queue_depth, clock)
        self.totals = Totals()
        self._clock = clock
        self._loader = loader
        self._validate = validate or _check_file
        self._lock = threading.Lock()
        self._state: ModelState = "not_configured"
        self._reason: str | None = NOT_CONFIGURED
        self._path = expand(config.model_path) if config.model_path else ""
        self._describe: dict[str, Any] | None = None
        self._last_error: dict[str, Any] | None = None
        self._control: _Control | None = None
        self._waking = False
        self._model: Any = None  # LoadedModel, worker thread only
        self._current: Job | None = None
        self._jobs: dict[str, Job] = {}
        self._thread: threading.Thread | None = None
        self._token: EventLoopToken | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_active = clock()

    # -- loop side: lifecycle ---------------------------------------------

    @property
    def state(self) -> ModelState:
        return self._state

    def now(self) -> float:
        """The engine's clock (monotonic seconds), which job deadlines use."""
        return self._clock()

    def start(self) -> None:
        """Capture the loop and, if a model is configured, begin loading it in the background."""
        self._token = current_token()
        native = self._token.native_token
        self._loop = native if isinstance(native, asyncio.AbstractEventLoop) else None
        if self._path:
            self._request(_Control("load", self._path, drain=False), "loading")

    def apply_config(self, config: InferenceConfig) -> None:
        """Take live settings (queue depth, timeout, keep-alive); the rest need a restart."""
        self.config = config
        self.queue.resize(config.queue_depth)
        self.queue.interrupt()  # the worker re-reads keep_alive

    async def stop(self) -> None:
        """Cancel every request, stop the worker and free the model.

        On cancellation the worker is abandoned (it is a daemon thread).
        """
        now = self._clock()
        for job in self.queue.drain():
            job.stop_requested = "cancelled"
            job.finish(empty_result(job, "cancelled", now))
        current = self._current
        if current is not None:
            current.stop_requested = "cancelled"
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._control = _Control("exit", drain=False)
        self.queue.interrupt()
        await anyio.to_thread.run_sync(thread.join, JOIN_TIMEOUT, abandon_on_cancel=True)
        if thread.is_alive():
            log.warning("inference worker did not stop within %gs", JOIN_TIMEOUT)

    def _request(self, control: _Control, state: ModelState) -> None:
        with self._lock:
            if self._control is not None or self._state in ("loading", "unloading"):
                raise Busy(
                    f"a model {self._control.kind if self._control else 'change'} is already "
                    "in progress",
                    state=self._state,
                )
            self._control = control
            self._state = state
            self._reason = None
            if control.kind == "load":
                self._path = control.path
        self._ensure_worker()
        self.queue.interrupt()

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._work, name="cortexd-inference", daemon=True
            )
            self._thread.start()

    async def load(self, path: str) -> dict[str, Any]:
        """Load `path` (after queued requests finish); returns the model's description.

        Raises:
            Busy: another load or unload is in progress.
            Unavailable: the model could not be loaded (data: path, reason, state).
        On cancellation the load still completes in the background.
        """
        path = expand(path)
        control = _Control("load", path)
        self._request(control, "loading")
        await control.done.wait()
        if control.error is not None:
            raise Unavailable(
                f"cannot load {path}: {control.error}",
                path=path,
                reason=control.error,
                state=self._state,
            )
        return self.status()

    async def unload(self) -> dict[str, Any]:
        """Free the model after queued requests finish.

        Raises:
            Busy: another load or unload is in progress.
            ModelNotLoaded: there is no model to unload.
        """
        if self._state not in ("ready", "idle"):
            raise ModelNotLoaded(self._state, self._reason)
        control = _Control("unload")
        self._request(control, "unloading")
        await control.done.wait()
        return self.status()

    # -- loop side: requests -----------------------------------------------

    def submit(self, job: Job) -> int:
        """Queue `job`; returns its position (1 = next to run).

        Raises:
            ModelNotLoaded: no model ready (data: state, reason).
            QueueFull: the queue holds `queue_depth` requests already.
        """
        with self._lock:
            if self._state == "idle" and self._control is None:
                # Unloaded after keep_alive: this request brings the model back.
                self._control = _Control("load", self._path, drain=False)
                self._state = "loading"
                self._waking = True
                wake = True
            else:
                wake = False
            if self._state != "ready" and not self._waking:
                raise ModelNotLoaded(self._state, self._reason)
        job.submitted = self._clock()
        job.deadline = job.submitted + self.config.request_timeout
        try:
            position = self.queue.put_nowait(job)
        except CortexError:
            self.totals.add(rejected_full=1)
            raise
        self._jobs[job.request_id] = job
        if wake:
            self._ensure_worker()
            self.queue.interrupt()
        return position

    def forget(self, job: Job) -> None:
        """The handler is done with `job`; if it had not finished, cancel it."""
        if not job.finished:
            self.cancel_job(job, "cancelled")
        self._jobs.pop(job.request_id, None)

    def cancel_job(self, job: Job, reason: StopReason) -> None:
        """Stop `job`: a waiting one ends now, a running one at the next check."""
        if job.stop_requested is None:
            job.stop_requested = reason
        if self.queue.remove(job.request_id) is not None:
            self._count_stop(reason)
            job.finish(empty_result(job, reason, self._clock()))

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

    # -- loop side: status -------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`model.status`: state, model, queue (with positions), in-flight request, totals."""
        now = self._clock()
        waiting = self.queue.snapshot()
        current = self._current
        return {
            "state": self._state,
            "reason": self._reason,
            "path": self._path or None,
            "model": self._describe,
            "last_error": self._last_error,
            "queue_depth": len(waiting),
            "queue_limit": self.queue.depth,
            "queue": [job.summary(now, i + 1) for i, job in enumerate(waiting[:MAX_LISTED])],
            "in_flight": current.summary(now) if current is not None else None,
            "request_timeout": self.config.request_timeout,
            "keep_alive": self.config.keep_alive,
            "totals": self.totals.snapshot(),
            "rss_bytes": rss_bytes(),
        }

    def summary(self) -> dict[str, Any]:
        """The short form for the daemon's `status`."""
        model = self._describe or {}
        current = self._current
        return {
            "state": self._state,
            "reason": self._reason,
            "model": model.get("name"),
            "size_bytes": model.get("size_bytes"),
            "n_ctx": model.get("n_ctx"),
            "queue_depth": len(self.queue),
            "in_flight": current.request_id if current is not None else None,
            "totals": self.totals.snapshot(),
        }

    # -- worker thread -------------------------------------------------------

    def _to_loop(self, fn: Callable[..., object], *args: Any) -> None:
        # RuntimeError: the loop is gone (shutdown finished); nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            anyio.from_thread.run_sync(fn, *args, token=self._token)

    def _post(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the loop without waiting for it (streamed text).

        anyio's `from_thread.run_sync` waits for the loop to run the call; once
        per token that round trip cost the worker several percent of its
        throughput, so on asyncio the worker only queues the call. Calls run in
        the order queued, so text always arrives before the `finish` that
        follows it; a job queues at most `max_tokens` of them.
        """
        if self._loop is None:
            self._to_loop(fn, *args)
            return
        # RuntimeError: the loop is closed (shutdown finished).
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _work(self) -> None:
        try:
            while True:
                control = self._due_control()
                if control is not None:
                    if control.kind == "exit":
                        self._unload_model()
                        self._to_loop(control.complete, None)
                        return
                    self._do_control(control)
                    continue
                job = self.queue.get(self._idle_timeout())
                if job is None:
                    self._maybe_idle_unload()
                    continue
                self._run_job(job)
        except BaseException:  # isolation boundary: a worker crash must be visible
            log.exception("inference worker crashed")
            with self._lock:
                self._state, self._reason = "failed", "the inference worker crashed; see the log"
            raise

    def _due_control(self) -> _Control | None:
        with self._lock:
            control = self._control
            if control is None or (control.drain and len(self.queue) > 0):
                return None
            return control

    def _idle_timeout(self) -> float | None:
        keep = self.config.keep_alive
        if keep <= 0 or self._model is None:
            return None
        return max(0.0, self._last_active + keep - self._clock())

    def _maybe_idle_unload(self) -> None:
        keep = self.config.keep_alive
        if keep <= 0 or self._model is None or len(self.queue) > 0:
            return
        if self._clock() - self._last_active < keep:
            return
        with self._lock:
            if self._control is not None:
                return
        log.info("unloading the model after %gs idle (inference.keep_alive)", keep)
        self._unload_model()
        with self._lock:
            self._state = "idle"
            self._reason = f"unloaded after {keep:g}s idle; the next request loads it again"

    def _do_control(self, control: _Control) -> None:
        error: str | None = None
        if control.kind == "unload":
            self._unload_model()
            with self._lock:
                self._state, self._reason = "unloaded", "unloaded by model.unload"
        else:
            error = self._load(control.path)
        with self._lock:
            self._control = None
            self._waking = False
        self._to_loop(control.complete, error)

    def _load(self, path: str) -> str | None:
        started = time.perf_counter()
        log.info("loading model %s", path)
        try:
            # Check the new file before giving up the old model, so a bad
            # path leaves the running model in place.
            self._validate(path, self.config)
            self._unload_model()
            model = self._load_model(path)
        except ModelFileError as exc:
            return self._load_failed(path, str(exc))
        except Exception as exc:  # isolation boundary: llama.cpp may raise anything
            log.exception("loading %s failed", path)
            return self._load_failed(path, f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - started
        load_ns = int(seconds * NS_PER_S)
        for job in self.queue.snapshot():
            job.load_ns = load_ns
        self._model = model
        self._last_active = self._clock()
        self._last_error = None
        with self._lock:
            self._describe = model.describe()
            self._state, self._reason = "ready", None
        described = self._describe or {}
        log.info(
            "model %s ready in %.2fs (n_ctx %s)",
            described.get("name"),
            seconds,
            described.get("n_ctx"),
        )
        return None

    def _load_model(self, path: str) -> Any:
        if self._loader is not None:
            return self._loader(path, self.config, default_threads(self.config.n_threads))
        from cortexd.inference.runner import load_model

        return load_model(path, self.config, default_threads(self.config.n_threads))

    def _load_failed(self, path: str, reason: str) -> str:
        log.error("cannot load model %s: %s", path, reason)
        self._last_error = {"path": path, "reason": reason, "at": time.time()}
        with self._lock:
            if self._model is not None:
                self._state, self._reason = "ready", None
            else:
                self._state, self._reason = "failed", reason
                self._describe = None
        # Requests queued behind an automatic reload cannot run now.
        if self._model is None:
            for job in self.queue.drain():
                self._to_loop(job.fail, ModelNotLoaded("failed", reason))
        return reason

    def _unload_model(self) -> None:
        model, self._model = self._model, None
        if model is not None:
            model.close()
            with self._lock:
                self._describe = None

    def _run_job(self, job: Job) -> None:
        totals = self.totals
        totals.add(requests=1)
        if job.stop_requested is not None:
            self._count_stop(job.stop_requested)
            self._to_loop(job.finish, empty_result(job, job.stop_requested, self._clock()))
            return
        model = self._model
        if model is None:
            totals.add(failed=1)
            self._to_loop(job.fail, ModelNotLoaded(self._state, self._reason))
            return
        self._current = job
        try:
            result = model.generate(job, lambda text: self._post(job.deliver_text, text))
        except CortexError as exc:
            totals.add(failed=1)
            self._to_loop(job.fail, exc)
            return
        except Exception:  # isolation boundary: one request's bug must not kill the worker
            log.exception(
                "inference request %s failed", job.request_id, extra={"REQUEST_ID": job.request_id}
            )
            totals.add(failed=1)
            self._to_loop(
                job.fail,
                InternalError(
                    f"inference failed (request_id {job.request_id})", request_id=job.request_id
                ),
            )
            return
        finally:
            job.phase = "done"
            self._current = None
            self._last_active = self._clock()
        reason = result["stop_reason"]
        if reason in ("stop", "length"):
            totals.add(completed=1)
        else:
            self._count_stop(reason)
        if result.get("ttft_ms") is not None:
            totals.observe_ttft(result["ttft_ms"] / 1000)
        totals.add(
            prompt_tokens=result["prompt_eval_count"],
            generated_tokens=result["eval_count"],
            eval_seconds=result["eval_duration"] / NS_PER_S,
        )
        log.debug(
            "request %s %s: %d prompt tokens, %d generated, %.1f tokens/s, %.0f ms",
            job.request_id,
            reason,
            result["prompt_eval_count"],
            result["eval_count"],
            result.get("tokens_per_second", 0.0),
            result.get("total_ms", 0.0),
            extra={"REQUEST_ID": job.request_id},
        )
        self._to_loop(job.finish, result)

    def _count_stop(self, reason: StopReason) -> None:
        if reason == "timeout":
            self.totals.add(timed_out=1)
        else:
            self.totals.add(cancelled=1)


def _check_file(path: str, config: InferenceConfig) -> None:
    check_fits(inspect(path), config.n_ctx, config.use_mmap)
