"""The runner slot: which model the daemon serves, the runner serving it, and its history.

`RunnerSlot` starts a runner for its target model, switches to another model
on `model.load` (the old runner keeps serving until the new one is ready),
ends it on unload or after `keep_alive`, and notices when it dies: it then
reports the crash (the in-flight request's error, `model.status`, an alert)
and schedules a restart with capped exponential backoff. After
`inference.max_load_failures` failed starts in a row it gives up until
`model.load` or a config reload.

It knows nothing of jobs: the engine hands it callbacks for a crash (to fail
the running request) and for giving up (to fail the queued ones).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import TaskGroup

from cortexd.config.schema import InferenceConfig
from cortexd.imports import imported
from cortexd.inference.alerting import AlertSink, CrashAlerts
from cortexd.inference.exits import ExitInfo, LoadFailed
from cortexd.inference.frames import Frame
from cortexd.inference.job import NS_PER_S
from cortexd.inference.modelfile import ModelRef, OpenModel, open_model, resolve
from cortexd.protocol import Unavailable

if TYPE_CHECKING:
    from cortexd.inference.process import RunnerProcess

log = logging.getLogger(__name__)

ModelState = Literal[
    "not_configured", "loading", "ready", "failed", "unloading", "unloaded", "idle"
]
NOT_CONFIGURED = (
    "no model is configured: set inference.model_path, start cortexd with --model PATH, "
    "or load one with model.load"
)
# Loading a large model from a slow disk takes minutes, not hours.
LOAD_TIMEOUT = 600.0
STDERR_IN_ERRORS = 10
DURING = {
    "loading": "loading",
    "prompt": "processing a prompt with",
    "generating": "generating with",
    "idle": "idle with",
}

OnFrame = Callable[[Frame], None]
OnFailure = Callable[[Unavailable], None]


def default_threads(configured: int) -> int:
    """`n_threads` 0 means every core but one, so the event loop keeps a core."""
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)) - 1)


def crash_message(info: ExitInfo, path: str) -> str:
    """ "inference runner crashed: SIGABRT while loading MODEL"."""
    during = DURING.get(info.during, info.during)
    message = f"inference runner crashed: {info.how} while {during} {path}"
    return f"{message} ({info.detail})" if info.detail else message


def unavailable(
    message: str, path: str, info: ExitInfo | None, reason: str | None = None
) -> Unavailable:
    """The error a request or a load gets: with the runner's end when it died."""
    data: dict[str, Any] = {"path": path, "reason": reason or message}
    if info is not None:
        data.update(
            signal=info.signal,
            exit_status=info.code,
            during=info.during,
            stderr=list(info.stderr[-STDERR_IN_ERRORS:]),
        )
    return Unavailable(message, **data)


class RunnerSlot:
    """The one runner the daemon keeps, and what it serves."""

    def __init__(
        self,
        config: InferenceConfig,
        *,
        alerts: AlertSink | None,
        command: Sequence[str] | None,
        env: Mapping[str, str] | None,
        clock: Callable[[], float],
        on_frame: OnFrame,
        on_crash: OnFailure,
        on_give_up: OnFailure,
        on_change: Callable[[], None],
    ) -> None:
        self.config = config
        self._alerts = CrashAlerts(alerts)
        self._command = tuple(command) if command else None  # None: default_command()
        self._env = dict(os.environ if env is None else env)
        self._clock = clock
        self._on_frame = on_frame
        self._on_crash = on_crash
        self._on_give_up = on_give_up
        self._on_change = on_change
        self.state: ModelState = "not_configured"
        self.reason: str | None = NOT_CONFIGURED
        self.failed_at: float | None = None
        # What the daemon means to serve: the configured model, then whatever
        # model.load last loaded (never a path that failed to load).
        self.target: ModelRef | None = None
        if config.model_path:
            self.target = ModelRef(resolve(config.model_path), "config")
        self.runner: RunnerProcess | None = None
        self.serving: ModelRef | None = None
        self.describe: dict[str, Any] | None = None
        self.last_error: dict[str, Any] | None = None
        self.last_exit: ExitInfo | None = None
        self.want = False  # bring a runner up for the target when none runs
        self.accepting = False  # requests may queue while it (re)starts
        self.restart_at = 0.0
        self.restarts = 0
        self.crashes = 0
        self._streak = 0  # runner failures since one last served a request
        self._load_failures = 0  # failed starts in a row
        self._memory_limit: int | None = None
        self._kill_reason: str | None = None
        self._closing = False
        self._tg: TaskGroup | None = None

    def start(self, tg: TaskGroup) -> None:
        """Begin serving the configured model, if any."""
        self._tg = tg
        self._alerts.start(tg)
        if self.target is not None:
            self.state, self.reason = "loading", None
            self.want = True
            self.restart_at = self._clock()

    def retry_after_reload(self) -> None:
        """A config reload gives a model the slot gave up on a new try."""
        if self.state == "failed" and not self.want and self.target is not None:
            log.info("configuration reloaded: trying the model again")
            self._load_failures = 0
            self.want = True
            self.restart_at = self._clock()

    def wake(self) -> None:
        """A request arrived for a model unloaded after keep_alive: bring it back."""
        self.state, self.reason = "loading", None
        self.want = self.accepting = True
        self.restart_at = self._clock()

    def served(self) -> None:
        """The runner finished a request: the crash streak is over."""
        self._streak = 0

    def kill(self, reason: str) -> None:
        """End a runner that stopped answering; the crash report names `reason`."""
        if self.runner is not None and self._kill_reason is None:
            self._kill_reason = reason
            log.warning("%s", reason)
            self.runner.kill()

    async def close(self) -> None:
        """End the runner (SIGKILL if it does not exit) and the alert task."""
        self._closing = True
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.stop()
        await self._alerts.close()

    # -- status ----------------------------------------------------------

    def shown_path(self) -> str | None:
        """The path that serves, else the one the slot means to serve."""
        if self.serving is not None and self.runner is not None:
            return self.serving.path
        return self.target.path if self.target is not None else None

    def status(self) -> dict[str, Any]:
        """The runner's pid, memory, restarts and last exit."""
        runner = self.runner
        restart = None
        if runner is None and self.want and self.state == "failed":
            restart = {"in_seconds": round(max(0.0, self.restart_at - self._clock()), 3)}
        return {
            "pid": runner.pid if runner is not None else None,
            "rss_bytes": runner.rss_bytes() if runner is not None else None,
            "started_at": runner.started_at if runner is not None else None,
            "restarts": self.restarts,
            "crashes": self.crashes,
            "last_exit": self.last_exit.as_dict() if self.last_exit is not None else None,
            "next_restart": restart,
            "nice": runner.nice if runner is not None else None,
            "memory_limit_bytes": self._memory_limit,
        }

    # -- starting runners --------------------------------------------------

    async def _launch(self, ref: ModelRef) -> tuple[RunnerProcess, dict[str, Any]]:
        """A runner serving `ref`, ready, and its model's description.

        Raises:
            LoadFailed: the file failed a check, or the runner refused it or died.
        """
        assert self._tg is not None
        # The runner's process code and the GGUF reader load with the first
        # runner, off the loop: a daemon with no model never needs them.
        try:
            await imported("cortexd.inference.process", "cortexd.inference.gguf")
        except ImportError as exc:  # say, files replaced by an upgrade under the daemon
            raise LoadFailed(f"the runner's code cannot be loaded: {exc}") from None
        from cortexd.inference.gguf import ModelFileError
        from cortexd.inference.process import RunnerProcess, default_command

        config = self.config
        try:
            opened: OpenModel = await anyio.to_thread.run_sync(open_model, ref, config)
        except ModelFileError as exc:
            raise LoadFailed(str(exc)) from None
        self._memory_limit = opened.memory_limit
        runner = RunnerProcess(
            command=self._command or default_command(),
            env=self._env,
            on_frame=self._frame,
            on_exit=self._exited,
        )
        load = {
            "op": "load",
            "name": ref.path,
            "settings": {
                "n_ctx": config.n_ctx,
                "n_batch": config.n_batch,
                "n_threads": default_threads(config.n_threads),
                "use_mmap": config.use_mmap,
            },
            "memory_limit_bytes": opened.memory_limit,
            "nice": config.nice,
        }
        log.info("starting an inference runner for %s", ref.path)
        try:
            ready = await runner.start(self._tg, opened.fd, load, LOAD_TIMEOUT)
        finally:
            opened.close()
        info = opened.info
        described = {
            "path": ref.path,
            "name": info.name,
            "architecture": info.architecture,
            "size_bytes": info.size_bytes,
            "n_ctx_train": info.context_length,
            **ready["model"],
        }
        described["kv_cache_bytes"] = info.kv_bytes(int(described.get("n_ctx") or config.n_ctx))
        log.info(
            "model %s ready in runner %s in %.2fs (n_ctx %s)",
            info.name,
            runner.pid,
            float(described.get("load_seconds") or 0.0),
            described.get("n_ctx"),
        )
        return runner, described

    def _serve(self, runner: RunnerProcess, ref: ModelRef, described: dict[str, Any]) -> int:
        """`runner` serves `ref` from now on; returns its load time in ns."""
        self.runner = runner
        self.serving = self.target = ref
        self.describe = described
        self.state, self.reason = "ready", None
        self.want = True
        self.accepting = False
        self._load_failures = 0
        self._kill_reason = None
        self._alerts.resolve(ref.path)
        return int(float(described.get("load_seconds") or 0.0) * NS_PER_S)

    async def bring_up(self) -> int | None:
        """Start a runner for the target (at start, after a crash, on a keep-alive
        wake); returns its load time in ns, or None if it failed."""
        ref = self.target
        assert ref is not None
        # A start after a failure or a crash is a restart; the first start
        # and a wake after keep_alive are not.
        if self._load_failures > 0 or (self.accepting and self._streak > 0):
            self.restarts += 1
        self.state, self.reason = "loading", None
        try:
            runner, described = await self._launch(ref)
        except LoadFailed as failure:
            self._start_failed(ref, failure)
            return None
        return self._serve(runner, ref, described)

    def _start_failed(self, ref: ModelRef, failure: LoadFailed) -> None:
        reason = self._note_failure(ref, failure)
        self._load_failures += 1
        self._streak += 1
        self.state, self.failed_at = "failed", time.time()
        if self._load_failures >= self.config.max_load_failures:
            self.want = self.accepting = False
            plural = "s" if self._load_failures > 1 else ""
            self.reason = (
                f"{reason} (gave up after {self._load_failures} failed start{plural}; "
                "model.load or a config reload tries again)"
            )
            log.error("%s", self.reason)
            self._on_give_up(unavailable(reason, ref.path, failure.exit))
            return
        delay = self._backoff()
        self.reason = f"{reason}; trying again in {delay:g}s"
        self.restart_at = self._clock() + delay
        log.error("%s", self.reason)

    def _note_failure(self, ref: ModelRef, failure: LoadFailed) -> str:
        """Why a start failed; a runner that died is a crash, with its alert."""
        reason = failure.reason
        if failure.exit is not None:
            self.crashes += 1
            self.last_exit = failure.exit
            reason = crash_message(failure.exit, ref.path)
            self._alerts.fire(ref.path, reason, failure.exit)
        self.last_error = {"path": ref.path, "reason": reason, "at": time.time()}
        if failure.exit is not None:
            self.last_error["exit"] = failure.exit.as_dict()
        return reason

    def _backoff(self) -> float:
        config = self.config
        delay: float = config.restart_backoff_seconds * 2 ** max(0, self._streak - 1)
        return min(delay, config.restart_backoff_max_seconds)

    # -- a runner's frames and end -------------------------------------------

    def _frame(self, runner: RunnerProcess, frame: Frame) -> None:
        if runner is self.runner:
            self._on_frame(frame)

    def _exited(self, runner: RunnerProcess, info: ExitInfo) -> None:
        if runner is not self.runner:
            return  # one the slot replaced or ended on purpose
        self.runner = None
        self.describe = None
        if runner.stopping or self._closing:
            return
        if self._kill_reason is not None:
            info = dataclasses.replace(info, detail=self._kill_reason)
            self._kill_reason = None
        ref = self.serving or self.target
        assert ref is not None
        self.crashes += 1
        self._streak += 1
        self.last_exit = info
        message = crash_message(info, ref.path)
        self.last_error = {"path": ref.path, "reason": message, "at": time.time()}
        self.last_error["exit"] = info.as_dict()
        self._alerts.fire(ref.path, message, info)
        self._on_crash(unavailable(message, ref.path, info))
        delay = self._backoff()
        self.state, self.failed_at = "failed", time.time()
        self.reason = f"{message}; restarting in {delay:g}s"
        self.want = self.accepting = True
        self.restart_at = self._clock() + delay
        log.error("%s", self.reason)
        self._on_change()

    # -- model changes -------------------------------------------------------

    async def load(self, ref: ModelRef, previous: ModelState) -> Unavailable | int:
        """Serve `ref` instead of the current model, which serves until the new
        runner is ready; returns the load time in ns, or the error (the
        previous model, if any, keeps serving)."""
        try:
            runner, described = await self._launch(ref)
        except LoadFailed as failure:
            reason = self._note_failure(ref, failure)
            log.error("cannot load model %s: %s", ref.path, reason)
            if self.runner is not None:
                self.state, self.reason = "ready", None
            elif previous in ("idle", "unloaded"):
                self.state = previous
            else:
                self.state, self.reason, self.failed_at = "failed", reason, time.time()
            error = unavailable(
                f"cannot load {ref.path}: {reason}", ref.path, failure.exit, reason=reason
            )
            error.data["state"] = self.state
            return error
        old = self.runner
        load_ns = self._serve(runner, ref, described)
        if old is not None:
            await old.stop()
        return load_ns

    async def unload(self, state: ModelState, reason: str) -> None:
        """End the runner: its memory goes back to the OS."""
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.stop()
        self.describe = None
        self.state, self.reason = state, reason
        self.want = self.accepting = False
        self._alerts.resolve_all()
