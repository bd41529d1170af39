"""Cancellation through the real daemon: inside prompt processing, on disconnect, on timeout."""

from __future__ import annotations

import socket
from typing import Any

import orjson
import pytest

from cortexd.protocol import ShuttingDown
from tests.daemon import DaemonProcess, running_daemon
from tests.inference.conftest import inference_config, wait_for, wait_state
from tests.inference.helpers import COUNTING_PROMPT, LONG_PROMPT, Background


def in_flight(d: DaemonProcess) -> Any:
    return d.call("model.status")["in_flight"]


def test_cancel_stops_a_long_prompt_inside_prompt_processing(model_daemon: DaemonProcess) -> None:
    running = Background(
        model_daemon.socket_path,
        "inference.generate",
        {"prompt": LONG_PROMPT, "max_tokens": 8, "temperature": 0, "stream": True},
    )
    wait_for(lambda: running.stream and (in_flight(model_daemon) or {}).get("phase") == "prompt")
    answer = model_daemon.call("inference.cancel", {"request_id": running.request_id()})
    assert answer == {"request_id": running.request_id(), "cancelled": True, "phase": "prompt"}
    result = running.join()
    assert result["stop_reason"] == "cancelled"
    assert result["cancelled_in"] == "prompt"
    assert result["eval_count"] == 0
    assert result["text"] == ""
    assert result["ttft_ms"] is None
    # llama.cpp's abort callback stopped the decode part-way through the prompt.
    assert result["prompt_tokens"] > 1500
    assert result["prompt_eval_count"] < result["prompt_tokens"]
    assert len(running.stream) == 1  # only the request_id message, never any text
    # The worker is free again and answers normally.
    after = model_daemon.call(
        "inference.generate", {"prompt": COUNTING_PROMPT, "max_tokens": 4, "temperature": 0}
    )
    assert after["stop_reason"] == "length"
    assert after["text"].startswith(" 9,")


def test_a_client_that_disconnects_cancels_its_request(model_daemon: DaemonProcess) -> None:
    before = model_daemon.call("model.status")["totals"]
    max_tokens = 2000
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "inference.generate",
        "params": {
            "prompt": COUNTING_PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        },
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(model_daemon.socket_path)
        sock.sendall(orjson.dumps(request) + b"\n")
        received = b""
        while received.count(b"\n") < 4:  # the request_id message and some text
            chunk = sock.recv(65536)
            assert chunk, "daemon closed the connection"
            received += chunk
        first = orjson.loads(received.split(b"\n")[0])
        request_id = first["params"]["data"]["request_id"]
        assert in_flight(model_daemon)["request_id"] == request_id
    # Closed without reading the rest: the daemon notices at its next write.
    wait_for(lambda: in_flight(model_daemon) is None)
    after = model_daemon.call("model.status")["totals"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["generated_tokens"] - before["generated_tokens"] < max_tokens
    assert model_daemon.call("ping")["pong"] is True


def test_a_request_past_its_deadline_returns_partial_text(model_path: str) -> None:
    config = inference_config(model_path, request_timeout=3.0)
    with running_daemon(config) as d:
        wait_state(d, {"ready"})
        result = d.call(
            "inference.generate",
            {"prompt": COUNTING_PROMPT, "max_tokens": 2000, "temperature": 0},
            timeout=60,
        )
        assert result["stop_reason"] == "timeout"
        assert result["eval_count"] < 2000
        # Whatever was generated before the deadline comes back (on a loaded
        # machine that may be little): it is the start of the greedy answer.
        counting = " " + ", ".join(str(n) for n in range(9, 700))
        assert counting.startswith(result["text"])
        assert len(result["text"]) >= result["eval_count"]
        assert d.call("model.status")["totals"]["timed_out"] == 1


def test_the_daemon_stops_cleanly_during_a_generation(model_path: str) -> None:
    config = {
        **inference_config(model_path),
        # Far shorter than the generation: the request must not wait for it.
        "server": {"shutdown_timeout": 1.0},
    }
    with running_daemon(config) as d:
        wait_state(d, {"ready"})
        running = Background(
            d.socket_path,
            "inference.generate",
            {"prompt": COUNTING_PROMPT, "max_tokens": 5000, "temperature": 0, "stream": True},
        )
        wait_for(lambda: len(running.stream) >= 2)
        assert d.stop() == 0
        with pytest.raises(ShuttingDown):
            running.join(30)
        log = d.log()
        assert "requests still running" not in log
        assert "did not exit" not in log


def test_hanging_up_during_prompt_processing_cancels_a_plain_request(
    model_daemon: DaemonProcess,
) -> None:
    before = model_daemon.call("model.status")["totals"]
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "inference.generate",
        "params": {"prompt": LONG_PROMPT, "max_tokens": 8, "temperature": 0},
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(model_daemon.socket_path)
        sock.sendall(orjson.dumps(request) + b"\n")
        wait_for(lambda: (in_flight(model_daemon) or {}).get("phase") == "prompt")
    # No stream to write to: the daemon sees the hang-up itself and aborts the decode.
    wait_for(lambda: in_flight(model_daemon) is None)
    after = model_daemon.call("model.status")["totals"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["generated_tokens"] == before["generated_tokens"]
    # Only the prompt batches finished before the abort count; the whole prompt is ~1,800.
    assert after["prompt_tokens"] - before["prompt_tokens"] < 1800
