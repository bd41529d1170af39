"""A runner process with a stand-in model, for the engine's logic tests.

Run as `python -m tests.inference.standin_runner --fd N`, exactly as the
daemon runs the real worker: it speaks the same frames through the worker's
own reader and `serve` loop, so only the model is replaced. The stand-in
lets a test hold a request "running" for as long as it needs, make one fail,
or end the process in the ways a real runner can end.

The prompt says what to do:

- `hold`: run until cancelled (then end with that stop reason);
- `deaf`: run and ignore cancels (the engine must kill the runner);
- `explode`: raise an unexpected error; `oom`: fail with UNAVAILABLE;
- `abort`: `os.abort()` mid-request; `garbage`: send a malformed frame;
- `half`: send the first bytes of a frame, then exit with status 7;
- anything else: answer "hello world" in two pieces.

A model file whose name contains `abort-on-load` makes the runner abort
while loading; `refuse` makes it answer `load_failed`. Every request run is
appended as `MODEL:REQUEST_ID` to the file named by $CORTEX_STANDIN_LOG.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from cortexd.inference.frames import HEADER, read_frame
from cortexd.inference.runner import Request
from cortexd.inference.worker import Channel, Reader, serve
from cortexd.protocol import Unavailable

POLL = 0.005


class StandIn:
    def __init__(self, name: str, channel: Channel) -> None:
        self.name = name
        self.channel = channel
        self.log = os.environ.get("CORTEX_STANDIN_LOG")

    def generate(
        self,
        request: Request,
        emit: Callable[[str, int], None],
        on_phase: Callable[[Request], None],
    ) -> dict[str, Any]:
        if self.log:
            with open(self.log, "a", encoding="utf-8") as fh:
                fh.write(f"{self.name}:{request.id}\n")
        request.phase = "generating"
        request.prompt_tokens = request.prompt_evaluated = 1
        on_phase(request)
        prompt = request.prompt or ""
        if prompt == "hold":
            while request.stop_requested is None:
                time.sleep(POLL)
            return outcome(request.stop_requested, "")
        if prompt == "deaf":
            while True:
                time.sleep(POLL)
        if prompt == "explode":
            raise RuntimeError("a bug in one request")
        if prompt == "oom":
            raise Unavailable("out of memory while generating", reason="out_of_memory")
        if prompt == "abort":
            os.abort()
        if prompt == "half":
            self.channel.sock.sendall(HEADER.pack(100) + b'{"op":"te')
            os._exit(7)
        if prompt == "garbage":
            self.channel.sock.sendall(HEADER.pack(5) + b"nope!")
            time.sleep(60)
        emit("hello ", 1)
        emit("world", 2)
        return outcome("stop", "")


def outcome(reason: str, tail: str) -> dict[str, Any]:
    return {
        "stop_reason": reason,
        "tail": tail,
        "prompt_tokens": 1,
        "prompt_evaluated": 1,
        "generated": 2 if reason == "stop" else 0,
        "prompt_s": 0.001,
        "first_s": 0.001,
        "eval_s": 0.001,
        "total_s": 0.002,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    sock = socket.socket(fileno=args.fd)
    channel = Channel(sock)
    load = read_frame(sock)
    assert load is not None and load["op"] == "load"
    name = os.path.basename(str(load["name"]))
    if "abort-on-load" in name:
        sys.stderr.write(f"standin: {name} makes me abort\n")
        sys.stderr.flush()
        os.abort()
    if "refuse" in name:
        channel.send({"op": "load_failed", "reason": f"{name} is refused", "out_of_memory": False})
        return 3
    model = {"n_ctx": 64, "n_threads": 1, "chat_template": False, "load_seconds": 0.001}
    channel.send({"op": "ready", "model": model, "pid": os.getpid()})
    reader = Reader(sock)
    reader.start()
    serve(channel, StandIn(name.removesuffix(".gguf"), channel), reader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
