"""The runner process on its own: its frames, with the real model and llama.cpp.

The daemon is left out: the test holds the other end of the socketpair and
speaks the frames itself, as the daemon does.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cortexd.inference.frames import HEADER, MAX_RUNNER_FRAME, encode, read_frame
from tests.inference.helpers import COUNTING_PROMPT, LONG_PROMPT

TIMEOUT = 60.0


class Runner:
    """`python -m cortexd.inference.worker` with the model loaded."""

    def __init__(self, model_path: str) -> None:
        ours, theirs = socket.socketpair()
        fd = os.open(model_path, os.O_RDONLY)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cortexd.inference.worker", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(), fd),
                stderr=subprocess.PIPE,
            )
        finally:
            theirs.close()
        ours.settimeout(TIMEOUT)
        self.sock = ours
        settings = {"n_ctx": 2048, "n_batch": 512, "n_threads": 1, "use_mmap": True}
        self.send(
            {
                "op": "load",
                "open_path": f"/proc/self/fd/{fd}",
                "name": model_path,
                "settings": settings,
                "memory_limit_bytes": 0,
                "nice": 0,
            }
        )
        os.close(fd)
        self.ready = self.receive()

    def send(self, frame: dict[str, Any]) -> None:
        self.sock.sendall(encode(frame))

    def receive(self) -> dict[str, Any]:
        frame = read_frame(self.sock, MAX_RUNNER_FRAME)
        assert frame is not None, "the runner closed its end"
        return frame

    def run(self, rid: str, prompt: str, **sampling: Any) -> tuple[str, dict[str, Any]]:
        """Send one request; the streamed text and the final frame."""
        self.send({"op": "run", "id": rid, "prompt": prompt, "sampling": sampling, "timeout_s": 60})
        text = ""
        while True:
            frame = self.receive()
            assert frame["id"] == rid
            if frame["op"] == "text":
                text += frame["text"]
            elif frame["op"] in ("done", "error"):
                return text, frame

    def close(self) -> int:
        self.sock.close()
        return self.proc.wait(TIMEOUT)


@pytest.fixture
def runner(model_path: str) -> Iterator[Runner]:
    r = Runner(model_path)
    yield r
    r.close()
    assert r.proc.stderr is not None
    r.proc.stderr.close()


def test_it_loads_generates_and_exits_when_the_daemon_closes_its_end(runner: Runner) -> None:
    assert runner.ready["op"] == "ready"
    assert runner.ready["pid"] == runner.proc.pid
    assert runner.ready["model"]["n_ctx"] == 2048
    text, done = runner.run("a", COUNTING_PROMPT, max_tokens=8, temperature=0)
    assert done["op"] == "done"
    assert text.startswith(" 9, 10,")
    outcome = done["outcome"]
    assert outcome["stop_reason"] == "length"
    assert outcome["generated"] == 8
    assert outcome["prompt_evaluated"] == outcome["prompt_tokens"] > 0
    assert runner.close() == 0


def test_a_grammar_constrains_the_answer(runner: Runner) -> None:
    grammar = 'root ::= ("yes" | "no") "."'
    text, done = runner.run("g", "Is the sky blue? Answer:", max_tokens=16, grammar=grammar)
    assert done["op"] == "done"
    assert re.fullmatch(r"(yes|no)\.", text), text


def test_a_repeat_penalty_changes_a_greedy_answer(runner: Runner) -> None:
    plain, _ = runner.run("p", COUNTING_PROMPT, max_tokens=24, temperature=0)
    penalised, done = runner.run(
        "q", COUNTING_PROMPT, max_tokens=24, temperature=0, repeat_penalty=1.8
    )
    assert done["op"] == "done"
    assert plain != penalised


def test_a_bad_grammar_is_refused_and_the_runner_goes_on(runner: Runner) -> None:
    _, error = runner.run("b", "x", max_tokens=4, grammar="root ::= (")
    assert error["op"] == "error"
    assert error["error"]["data"] == {"name": "INVALID_PARAMS", "param": "grammar"}
    text, done = runner.run("c", COUNTING_PROMPT, max_tokens=4, temperature=0)
    assert done["op"] == "done"
    assert text.startswith(" 9,")


def test_a_cancel_frame_stops_prompt_processing(runner: Runner) -> None:
    runner.send(
        {
            "op": "run",
            "id": "long",
            "prompt": LONG_PROMPT,
            "sampling": {"max_tokens": 4},
            "timeout_s": 60,
        }
    )
    phase = runner.receive()
    assert (phase["op"], phase["phase"]) == ("phase", "prompt")
    time.sleep(0.2)  # inside llama_decode
    runner.send({"op": "cancel", "id": "long", "reason": "cancelled"})
    done = runner.receive()
    assert done["op"] == "done"
    outcome = done["outcome"]
    assert outcome["stop_reason"] == "cancelled"
    # The abort callback stopped the decode: no token, the prompt not all read.
    assert outcome["first_s"] is None
    assert outcome["generated"] == 0
    assert outcome["prompt_evaluated"] < outcome["prompt_tokens"]


def test_a_bad_frame_from_the_daemon_ends_the_runner_with_a_reason(runner: Runner) -> None:
    runner.sock.sendall(HEADER.pack(4) + b"oops")
    assert runner.proc.wait(TIMEOUT) == 4
    assert runner.proc.stderr is not None
    assert b"bad frame from the daemon" in runner.proc.stderr.read()


def test_a_frame_larger_than_the_bound_is_refused_unread(runner: Runner) -> None:
    runner.sock.sendall(HEADER.pack(1 << 31))
    assert runner.proc.wait(TIMEOUT) == 4


def test_a_refused_setpriority_leaves_the_level_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The shipped unit's seccomp filter (~@resources) answers setpriority with
    # EPERM; without systemd as PID 1 here, the refusal is simulated.
    from cortexd.inference import worker

    def refuse(*_: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    before = os.getpriority(os.PRIO_PROCESS, 0)
    monkeypatch.setattr(worker.os, "setpriority", refuse)
    assert worker.apply_limits(0, before + 5) == before
    assert f"nice level {before + 5} not applied" in capsys.readouterr().err
