"""The inference runner: a child process that owns llama.cpp and nothing else.

Started by the daemon as `python -m cortexd.inference.worker --fd N`, with one
end of a socketpair as descriptor N and the model file as another inherited
descriptor. The daemon keeps the queue, the jobs and the clients; this
process loads one model, then runs the requests the daemon sends, one at a
time, streaming text back. If llama.cpp aborts, segfaults or runs out of
memory, only this process dies; the daemon reports it and starts another.

Frames (see `frames.py`), daemon → runner:

- `load` (first and only once): `open_path`, `name`, `settings`
  (`n_ctx`, `n_batch`, `n_threads`, `use_mmap`), `memory_limit_bytes`, `nice`;
- `run`: `id`, `prompt` or `messages`, `sampling` (see `runner.Sampling`),
  `timeout_s`;
- `cancel`: `id`, `reason` (`cancelled` or `timeout`);
- `exit`, or the end of the stream: finish the running request and exit.

Runner → daemon: `ready` (`model`, `pid`, `nice`: the level it got) or `load_failed` (`reason`,
`out_of_memory`); then per request `phase` (`id`, `phase`, `prompt_tokens`,
`prompt_evaluated`), `text` (`id`, `text`, `generated`), and one `done`
(`id`, `outcome`) or `error` (`id`, `error` as a JSON-RPC error object).

Two threads: the main thread owns the model and writes every frame; a reader
thread reads frames, so that a cancel reaches the running request — the abort
callback inside `llama_decode` reads the flag it sets.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import queue
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from cortexd.inference.frames import MAX_RUNNER_FRAME, Frame, FrameError, encode, read_frame
from cortexd.inference.runner import LoadedModel, Request, Sampling, Settings
from cortexd.protocol import CortexError, InternalError

PR_SET_PDEATHSIG = 1
# ggml_log_level as the linked ggml.h numbers it (llama-cpp-python's own
# logger still uses an older numbering): warnings and errors reach the daemon
# through stderr; the info lines of a load are a hundred lines.
LOG_WARN, LOG_ERROR, LOG_CONT = 3, 4, 5
ERRORS_KEPT = 8
REASON_LINES = 3
# llama.cpp's lines that only say that something above failed.
GENERIC_ERRORS = (
    "failed to load model",
    "failed to read tensor info",
    "failed to read tensor data",
)
MiB = 1024 * 1024
# What a failed allocation looks like in llama.cpp's, numpy's and Python's words.
OUT_OF_MEMORY_SIGNS = (
    "cannot allocate memory",
    "failed to allocate",
    "unable to allocate",
    "out of memory",
    "bad_alloc",
    "memoryerror",
    "failed to map segment",
)
EXIT_OK = 0
EXIT_LOAD_FAILED = 3
EXIT_PROTOCOL = 4


class LlamaLog:
    """llama.cpp's log callback: warnings and errors to stderr, errors kept.

    The errors are what a failed load explains itself with ("error loading
    model: …"); llama-cpp-python's own callback would print them only in
    verbose mode, together with every info line.
    """

    def __init__(self) -> None:
        self.errors: collections.deque[str] = collections.deque(maxlen=ERRORS_KEPT)
        self._last_level = 0
        self._callback: Any = None

    def install(self, llama_cpp: Any) -> None:
        self._callback = llama_cpp.llama_log_callback(self._log)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _log(self, level: int, text: bytes, _data: Any) -> None:
        if level == LOG_CONT:
            level = self._last_level
        self._last_level = level
        if level not in (LOG_WARN, LOG_ERROR):
            return
        os.write(2, text)
        if level == LOG_ERROR:
            line = text.decode("utf-8", "replace").strip()
            if line:
                self.errors.append(line)

    def reason(self) -> str | None:
        """llama.cpp's own words for the last failure: its specific error lines,
        without function-name prefixes or the generic "failed to load model"."""
        found: list[str] = []
        for line in self.errors:
            head, sep, rest = line.partition(": ")
            text = rest if sep and " " not in head else line
            text = text.removeprefix("error loading model: ")
            if any(generic in text for generic in GENERIC_ERRORS) or text in found:
                continue
            found.append(text)
        return "; ".join(found[-REASON_LINES:]) or None


class Channel:
    """The runner's end of the socketpair; only the main thread writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, frame: Frame) -> None:
        self.sock.sendall(encode(frame, MAX_RUNNER_FRAME))


def apply_limits(memory_limit: int, nice: int) -> int:
    """Lower this process's priority and cap its address space; returns the nice
    level it runs at.

    Done first, while the process has one thread: on Linux the nice value
    belongs to a thread, and the threads llama.cpp starts inherit it. A
    system-call filter that refuses setpriority (the shipped unit's
    `~@resources`) leaves the level as it was; that is reported, not fatal.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            current = nice
        except PermissionError:
            print(
                f"runner: nice level {nice} not applied (setpriority refused); "
                f"running at {current}",
                file=sys.stderr,
                flush=True,
            )
    if memory_limit > 0:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            memory_limit = min(memory_limit, hard)  # a limit can only be lowered
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    return current


def _die_with_parent() -> None:
    # The end of the socketpair also tells the runner; this covers a runner
    # stuck inside llama.cpp when the daemon is killed.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _memory_reason(detail: str, memory_limit: int) -> tuple[str, bool]:
    lowered = detail.lower()
    if not any(sign in lowered for sign in OUT_OF_MEMORY_SIGNS):
        return detail, False
    if memory_limit > 0:
        return (
            f"out of memory within the runner's limit of {memory_limit // MiB} MiB "
            f"(inference.memory_limit_mb): {detail}",
            True,
        )
    return f"out of memory: {detail}", True


def load(channel: Channel, frame: Frame, log: LlamaLog) -> LoadedModel | None:
    """Load the model the `load` frame names; report `ready` or `load_failed`."""
    memory_limit = int(frame.get("memory_limit_bytes") or 0)
    name = str(frame["name"])
    try:
        nice = apply_limits(memory_limit, int(frame.get("nice") or 0))
        import llama_cpp

        log.install(llama_cpp)
        settings = Settings(**frame["settings"])
        model = LoadedModel(str(frame["open_path"]), name, settings)
    except MemoryError:
        reason, oom = _memory_reason("MemoryError while loading", memory_limit)
        channel.send({"op": "load_failed", "reason": reason, "out_of_memory": oom})
        return None
    except (ImportError, OSError) as exc:
        reason, oom = _memory_reason(f"cannot start llama.cpp: {exc}", memory_limit)
        channel.send({"op": "load_failed", "reason": reason, "out_of_memory": oom})
        return None
    except ValueError as exc:
        # llama-cpp-python says only "Failed to load model from file"; the
        # log callback kept what llama.cpp itself said.
        detail = (log.reason() or str(exc)).replace(str(frame["open_path"]), name)
        reason, oom = _memory_reason(detail, memory_limit)
        channel.send({"op": "load_failed", "reason": reason, "out_of_memory": oom})
        return None
    channel.send({"op": "ready", "model": model.describe(), "pid": os.getpid(), "nice": nice})
    return model


class Reader(threading.Thread):
    """Reads frames; queues requests and sets the stop flag of a cancelled one."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="cortexd-runner-reader", daemon=True)
        self.sock = sock
        self.requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._live: dict[str, Request] = {}
        self._lock = threading.Lock()
        self.problem: str | None = None

    def run(self) -> None:
        try:
            while True:
                frame = read_frame(self.sock)
                if frame is None or frame["op"] == "exit":
                    break
                self._take(frame)
        except (FrameError, OSError, KeyError, TypeError, ValueError) as exc:
            self.problem = f"{type(exc).__name__}: {exc}"
        with self._lock:
            for request in self._live.values():
                request.stop_requested = "cancelled"
        self.requests.put(None)

    def _take(self, frame: Frame) -> None:
        op = frame["op"]
        if op == "run":
            request = _request(frame)
            with self._lock:
                self._live[request.id] = request
            self.requests.put(request)
        elif op == "cancel":
            with self._lock:
                live = self._live.get(str(frame["id"]))
            if live is not None and live.stop_requested is None:
                live.stop_requested = "timeout" if frame.get("reason") == "timeout" else "cancelled"
        else:
            raise FrameError(f"unknown op {op!r}")

    def done(self, request: Request) -> None:
        with self._lock:
            self._live.pop(request.id, None)


def _request(frame: Frame) -> Request:
    raw = dict(frame.get("sampling") or {})
    raw["stop"] = tuple(raw.get("stop") or ())
    messages = frame.get("messages")
    return Request(
        id=str(frame["id"]),
        sampling=Sampling(**raw),
        deadline=time.monotonic() + float(frame["timeout_s"]),
        prompt=frame.get("prompt"),
        messages=list(messages) if messages is not None else None,
    )


class Model(Protocol):
    """What `serve` needs of a model: `LoadedModel`, or a stand-in in tests."""

    def generate(
        self,
        request: Request,
        emit: Callable[[str, int], None],
        on_phase: Callable[[Request], None],
    ) -> dict[str, Any]: ...


def serve(channel: Channel, model: Model, reader: Reader) -> None:
    """Run requests one at a time until the daemon says exit or goes away."""
    send = channel.send
    while True:
        request = reader.requests.get()
        if request is None:
            return
        rid = request.id

        def emit(text: str, generated: int, rid: str = rid) -> None:
            send({"op": "text", "id": rid, "text": text, "generated": generated})

        def on_phase(r: Request) -> None:
            send(
                {
                    "op": "phase",
                    "id": r.id,
                    "phase": r.phase,
                    "prompt_tokens": r.prompt_tokens,
                    "prompt_evaluated": r.prompt_evaluated,
                }
            )

        try:
            outcome = model.generate(request, emit, on_phase)
        except CortexError as exc:
            send({"op": "error", "id": rid, "error": exc.to_error()})
        except Exception:  # isolation boundary: one request's bug must not end the runner
            traceback.print_exc()
            error = InternalError(f"inference failed (request_id {rid})", request_id=rid)
            send({"op": "error", "id": rid, "error": error.to_error()})
        else:
            send({"op": "done", "id": rid, "outcome": outcome})
        finally:
            reader.done(request)


def main(argv: list[str] | None = None) -> int:
    """The runner's entry point; returns its exit status."""
    parser = argparse.ArgumentParser(prog="python -m cortexd.inference.worker")
    parser.add_argument("--fd", type=int, required=True, help="the socketpair end to speak on")
    args = parser.parse_args(argv)
    # The daemon decides when the runner stops; a Ctrl-C meant for a
    # foreground daemon must not reach it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    sock = socket.socket(fileno=args.fd)
    channel = Channel(sock)
    log = LlamaLog()
    try:
        first = read_frame(sock)
        if first is None:
            return EXIT_OK
        if first["op"] != "load":
            raise FrameError(f"expected a load frame, got {first['op']!r}")
        model = load(channel, first, log)
        if model is None:
            return EXIT_LOAD_FAILED
        reader = Reader(sock)
        reader.start()
        try:
            serve(channel, model, reader)
        finally:
            model.close()
        if reader.problem is not None:
            print(f"runner: bad frame from the daemon: {reader.problem}", file=sys.stderr)
            return EXIT_PROTOCOL
    except (FrameError, KeyError, TypeError) as exc:
        print(f"runner: bad frame from the daemon: {exc}", file=sys.stderr)
        return EXIT_PROTOCOL
    except (BrokenPipeError, ConnectionResetError):
        return EXIT_OK  # the daemon went away; nobody is left to answer
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
