"""The daemon's handle on one runner process: start it, talk to it, see it end.

A `RunnerProcess` spawns `python -m cortexd.inference.worker` with one end of
a socketpair and the model file as inherited descriptors, sends the `load`
frame and waits for `ready` (or `load_failed`, or the process's death). Once
ready, a reader task hands every frame to the engine and, at the end of the
stream, reaps the process and reports how it ended: exit status or signal,
what it was doing, and the last lines it wrote to stderr.

Everything here runs on the event loop; the only blocking calls are a
non-blocking `socketpair` and reading `/proc`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import Process, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from cortexd.inference.exits import RUNNER_GONE, ExitInfo, LoadFailed
from cortexd.inference.frames import (
    HEADER,
    MAX_RUNNER_FRAME,
    Frame,
    FrameError,
    check_length,
    decode,
    encode,
)

log = logging.getLogger(__name__)

WORKER = ("-m", "cortexd.inference.worker")
STDERR_KEPT = 20
STDERR_LINE_MAX = 400
STDERR_CHUNK = 4096
STDERR_DRAIN = 1.0
# After the socket closes, a healthy runner is gone within milliseconds; one
# stuck in llama.cpp gets this long before SIGKILL.
EXIT_GRACE = 5.0
# llama.cpp prints a backtrace on abort by attaching gdb when it can find
# one: seconds of work while the runner is already lost.
RUNNER_ENV = {
    "GGML_NO_BACKTRACE": "1",
    # numpy's OpenBLAS would start a thread per core, each with its own
    # buffers, none of which llama.cpp uses; with an address-space limit
    # they are what fails first.
    "OPENBLAS_NUM_THREADS": "1",
    # glibc reserves 64 MiB of address space per malloc arena (up to 8 per
    # core); two are plenty for one generating thread.
    "MALLOC_ARENA_MAX": "2",
}


def default_command() -> tuple[str, ...]:
    """The command that starts a runner: this interpreter, the worker module."""
    return (sys.executable, *WORKER)


def describe_returncode(code: int) -> tuple[int | None, str | None]:
    """(exit status, signal name) from a Popen-style return code."""
    if code < 0:
        try:
            return None, signal.Signals(-code).name
        except ValueError:
            return None, f"signal {-code}"
    return code, None


@dataclass(eq=False)
class RunnerProcess:
    """One runner child process and its end of the socketpair."""

    command: Sequence[str]
    env: Mapping[str, str]
    on_frame: Callable[[RunnerProcess, Frame], None]
    on_exit: Callable[[RunnerProcess, ExitInfo], None]
    clock: Callable[[], float] = time.monotonic
    pid: int | None = None
    started_at: float = 0.0  # wall clock, for status
    stopping: bool = False
    activity: str = "loading"  # what it does now, for the exit report
    nice: int | None = None  # the level it runs at, as it reported
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_KEPT)
    )
    _process: Process | None = None
    _stream: SocketStream | None = None
    _reader: BufferedByteReceiveStream | None = None
    _exit: ExitInfo | None = None
    _exited: anyio.Event = field(default_factory=anyio.Event)
    _stderr_closed: anyio.Event = field(default_factory=anyio.Event)
    _frames_read: anyio.Event = field(default_factory=anyio.Event)
    _reading: bool = False
    _send_lock: anyio.Lock = field(default_factory=anyio.Lock)

    # -- start -----------------------------------------------------------

    async def start(
        self, tg: TaskGroup, model_fd: int, load: Frame, load_timeout: float
    ) -> dict[str, Any]:
        """Spawn the runner, load the model; returns its `ready` frame.

        Raises:
            LoadFailed: the runner refused the model, died, or did not answer
                within `load_timeout` (it is killed then).
        On cancellation the runner is killed.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            load = {**load, "open_path": f"/proc/self/fd/{model_fd}"}
            command = [*self.command, "--fd", str(theirs.fileno())]
            self._process = await anyio.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(), model_fd),
                env={**self.env, **RUNNER_ENV},
                # Its own session: a Ctrl-C at the daemon's terminal is for the daemon.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self._process.pid
        self.started_at = time.time()
        ours.setblocking(False)
        self._stream = await SocketStream.from_socket(ours)
        self._reader = BufferedByteReceiveStream(self._stream)
        tg.start_soon(self._read_stderr)
        tg.start_soon(self._reap)
        ready: Frame | None = None
        try:
            with anyio.move_on_after(load_timeout) as scope:
                await self.send(load)
                ready = await self._receive()
        except (FrameError, anyio.EndOfStream, anyio.IncompleteRead, *RUNNER_GONE) as exc:
            if isinstance(exc, FrameError):
                self.kill()
            # Otherwise it is dying on its own: wait for how it ends.
            raise LoadFailed(self._loading_death(), exit=await self._wait_exit(exc)) from None
        except BaseException:
            self.kill()
            raise
        if scope.cancelled_caught:
            self.kill()
            reason = f"the runner did not finish loading within {load_timeout:g}s"
            raise LoadFailed(reason, exit=await self._wait_exit(None))
        assert ready is not None
        if ready["op"] == "load_failed":
            await self.stop()
            raise LoadFailed(
                str(ready.get("reason") or "the runner could not load the model"),
                oom=bool(ready.get("out_of_memory")),
            )
        if ready["op"] != "ready" or not isinstance(ready.get("model"), dict):
            self.kill()
            raise LoadFailed(f"the runner answered the load with {ready['op']!r}")
        self.activity = "idle"
        nice = ready.get("nice")
        self.nice = nice if isinstance(nice, int) else None
        self._reading = True
        tg.start_soon(self._read_frames)
        return ready

    def _loading_death(self) -> str:
        return "the runner ended while loading the model"

    async def _wait_exit(self, cause: BaseException | None) -> ExitInfo:
        with anyio.move_on_after(EXIT_GRACE):
            await self._exited.wait()
        if self._exit is None:
            self.kill()
            await self._exited.wait()
        assert self._exit is not None
        if isinstance(cause, FrameError) and self._exit.detail is None:
            self._exit = _with_detail(self._exit, str(cause))
        return self._exit

    # -- frames ----------------------------------------------------------

    async def send(self, frame: Frame) -> None:
        """Send one frame; raises BrokenResourceError or OSError if the runner is gone."""
        data = encode(frame)
        assert self._stream is not None
        async with self._send_lock:
            await self._stream.send(data)

    async def _receive(self) -> Frame:
        """The next frame. Raises EndOfStream at a clean end between frames,
        IncompleteRead at an end inside one, FrameError for a bad one."""
        reader = self._reader
        assert reader is not None
        try:
            header = await reader.receive_exactly(HEADER.size)
        except anyio.IncompleteRead:
            if not reader.buffer:
                raise anyio.EndOfStream from None
            raise
        (length,) = HEADER.unpack(header)
        check_length(length, MAX_RUNNER_FRAME)
        return decode(await reader.receive_exactly(length))

    async def _read_frames(self) -> None:
        detail: str | None = None
        try:
            while True:
                frame = await self._receive()
                self.on_frame(self, frame)
        except anyio.IncompleteRead:
            detail = "the runner's stream ended inside a frame"
        except FrameError as exc:
            detail = f"the runner sent a bad frame: {exc}"
            self.kill()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            self._frames_read.set()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(EXIT_GRACE):
                await self._exited.wait()
            if self._exit is None:
                self.kill()
                await self._exited.wait()
        assert self._exit is not None
        info = _with_detail(self._exit, detail) if detail else self._exit
        self._exit = info
        self.on_exit(self, info)

    # -- the process -----------------------------------------------------

    async def _reap(self) -> None:
        """Wait for the runner to end and record how. If the daemon stops first
        (this task is cancelled), the runner is killed: a runner must never
        outlive the daemon, nor keep it waiting."""
        process = self._process
        assert process is not None
        try:
            code = await process.wait()
        except anyio.get_cancelled_exc_class():
            self.kill()
            with anyio.CancelScope(shield=True):
                await self._ended(await process.wait())
            raise
        with anyio.CancelScope(shield=True):
            # The last lines (an assertion's message) may still be in the pipe.
            with anyio.move_on_after(STDERR_DRAIN):
                await self._stderr_closed.wait()
            await self._ended(code)

    async def _ended(self, code: int) -> None:
        status, signame = describe_returncode(code)
        self._exit = ExitInfo(
            code=status,
            signal=signame,
            during=self.activity,
            stderr=tuple(self.stderr_tail),
            at=time.time(),
        )
        if self._reading:
            # What the runner wrote before it ended is still to be read: closing
            # first would hide a frame cut short behind a plain close.
            with anyio.move_on_after(STDERR_DRAIN):
                await self._frames_read.wait()
        if self._stream is not None:
            with contextlib.suppress(OSError, anyio.BrokenResourceError):
                await self._stream.aclose()
        self._exited.set()

    async def _read_stderr(self) -> None:
        process = self._process
        assert process is not None and process.stderr is not None
        pending = b""
        try:
            async for chunk in process.stderr:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._stderr_line(line)
                if len(pending) > STDERR_CHUNK:
                    self._stderr_line(pending)
                    pending = b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        if pending:
            self._stderr_line(pending)
        self._stderr_closed.set()

    def _stderr_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if not text:
            return
        if len(text) > STDERR_LINE_MAX:
            text = text[:STDERR_LINE_MAX] + "…"
        self.stderr_tail.append(text)
        log.info("inference runner %s: %s", self.pid, text)

    @property
    def alive(self) -> bool:
        return self._exit is None and self._process is not None

    def kill(self) -> None:
        """SIGKILL the runner (idempotent)."""
        process = self._process
        if process is not None and self._exit is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                process.kill()

    async def stop(self, grace: float = EXIT_GRACE) -> ExitInfo | None:
        """Ask the runner to exit (it finishes nothing: the daemon sends no work then);
        SIGKILL after `grace` seconds. Returns how it ended."""
        self.stopping = True
        if self._process is None:
            return None
        if self._exit is None:
            with contextlib.suppress(*RUNNER_GONE):
                with anyio.move_on_after(grace):
                    await self.send({"op": "exit"})
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(grace):
                await self._exited.wait()
            if self._exit is None:
                log.warning(
                    "inference runner %s did not exit within %gs; killing it", self.pid, grace
                )
                self.kill()
                await self._exited.wait()
        return self._exit

    def rss_bytes(self) -> int | None:
        """The runner's resident memory, from /proc."""
        if self.pid is None or not self.alive:
            return None
        try:
            with open(f"/proc/{self.pid}/statm", encoding="ascii") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None


def _with_detail(info: ExitInfo, detail: str | None) -> ExitInfo:
    return ExitInfo(
        code=info.code,
        signal=info.signal,
        during=info.during,
        stderr=info.stderr,
        at=info.at,
        detail=detail,
    )
