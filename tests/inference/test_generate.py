"""Inference through the real daemon with the real model: output, streaming, queue, errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cortexd.protocol import InvalidParams, NotFound, QueueFull
from tests.daemon import DaemonProcess
from tests.inference.conftest import wait_for
from tests.inference.helpers import COUNTING_PROMPT, Background
from tests.metrics.helpers import promtool, sample

TTFT_COUNT = "cortex_inference_time_to_first_token_seconds_count"
TTFT_SUM = "cortex_inference_time_to_first_token_seconds_sum"

PROMPT = "Why would a Linux disk fill up?"


def direct_completion(model_path: str, prompt: str, **params: Any) -> str:
    """llama-cpp-python called directly, configured like the daemon (one thread, n_ctx 2048)."""
    from llama_cpp import Llama

    llm = Llama(model_path, n_ctx=2048, n_batch=512, n_threads=1, verbose=False)
    try:
        out = llm.create_completion(prompt, **params)
        return str(out["choices"][0]["text"])  # type: ignore[index]
    finally:
        llm.close()


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 48, "temperature": 0.0, "seed": 42},
        {"max_tokens": 32, "temperature": 0.7, "top_p": 0.9, "seed": 7},
    ],
    ids=["greedy", "sampled"],
)
def test_output_equals_llama_cpp_called_directly(
    model_daemon: DaemonProcess, model_path: str, params: dict[str, Any]
) -> None:
    result = model_daemon.call("inference.generate", {"prompt": PROMPT, **params}, timeout=60)
    expected = direct_completion(model_path, PROMPT, **params)
    assert result["text"] == expected
    assert result["text"].strip()
    assert result["stop_reason"] in ("stop", "length")
    assert result["eval_count"] <= params["max_tokens"]
    assert result["prompt_eval_count"] == result["prompt_tokens"] > 0
    for key in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(result[key], int) and result[key] > 0
    assert result["total_ms"] >= result["ttft_ms"] >= result["queue_ms"] >= 0
    assert result["tokens_per_second"] > 0


def test_streaming_sends_the_text_as_it_is_generated(model_daemon: DaemonProcess) -> None:
    messages: list[Any] = []
    with model_daemon.client(60) as client:
        result = client.call(
            "inference.generate",
            {"prompt": COUNTING_PROMPT, "max_tokens": 40, "temperature": 0, "stream": True},
            on_stream=messages.append,
        )
    assert messages[0]["request_id"] == result["request_id"]
    assert messages[0]["position"] == 1
    texts = [m["text"] for m in messages[1:]]
    assert len(texts) >= 5
    assert "".join(texts) == result["text"]
    assert result["stop_reason"] == "length"
    assert result["eval_count"] == 40


def test_time_to_first_token_reaches_prometheus(model_daemon: DaemonProcess) -> None:
    before = sample(model_daemon.call("metrics")["text"], TTFT_COUNT) or 0
    result = model_daemon.call(
        "inference.generate", {"prompt": COUNTING_PROMPT, "max_tokens": 4, "temperature": 0}
    )
    text = model_daemon.call("metrics")["text"]
    promtool(text)
    assert sample(text, TTFT_COUNT) == before + 1
    # The request's own TTFT lies inside the sum the histogram grew by.
    assert (sample(text, TTFT_SUM) or 0) >= result["ttft_ms"] / 1000


def test_requests_and_tokens_reach_prometheus(model_daemon: DaemonProcess) -> None:
    completed = 'cortex_inference_requests_total{outcome="completed"}'
    prompt = 'cortex_inference_tokens_total{kind="prompt"}'
    generated = 'cortex_inference_tokens_total{kind="generated"}'
    before = model_daemon.call("metrics")["text"]
    result = model_daemon.call(
        "inference.generate", {"prompt": COUNTING_PROMPT, "max_tokens": 6, "temperature": 0}
    )
    after = model_daemon.call("metrics")["text"]
    assert result["eval_count"] > 0 and result["prompt_tokens"] > 0
    assert sample(after, completed) == (sample(before, completed) or 0) + 1
    assert sample(after, prompt) == (sample(before, prompt) or 0) + result["prompt_tokens"]
    assert sample(after, generated) == (sample(before, generated) or 0) + result["eval_count"]


def test_stop_strings_end_the_answer_before_them(model_daemon: DaemonProcess) -> None:
    result = model_daemon.call(
        "inference.generate",
        {"prompt": COUNTING_PROMPT, "max_tokens": 60, "temperature": 0, "stop": ["14"]},
        timeout=60,
    )
    assert result["stop_reason"] == "stop"
    assert result["text"].rstrip().endswith("13,")
    assert "14" not in result["text"]


def test_chat_uses_the_model_template(model_daemon: DaemonProcess) -> None:
    result = model_daemon.call(
        "inference.chat",
        {
            "messages": [{"role": "user", "content": "Name one Linux command."}],
            "max_tokens": 24,
            "temperature": 0,
        },
        timeout=60,
    )
    assert result["text"].strip()
    assert "<|im_start|>" not in result["text"]
    # The template's system prompt and markers make the prompt far longer than the question.
    assert result["prompt_tokens"] > 20


def test_ping_and_status_answer_during_a_generation(model_daemon: DaemonProcess) -> None:
    running = Background(
        model_daemon.socket_path,
        "inference.generate",
        {"prompt": COUNTING_PROMPT, "max_tokens": 2000, "temperature": 0, "stream": True},
    )
    wait_for(lambda: len(running.stream) >= 3)
    with model_daemon.client(5) as client:
        for _ in range(20):
            assert client.call("ping")["pong"] is True
        status = client.call("status")["components"]["inference"]
        # `status` is for every reader: it says what runs, not whose request it is.
        assert status["in_flight"] == "generating"
        assert status["runner_pid"] != model_daemon.proc.pid
        assert status["runner_rss_bytes"] > 50_000_000
        assert status["state"] == "ready"
        assert status["n_ctx"] == 2048
        assert status["size_bytes"] > 50_000_000
        assert status["model"]
        assert status["totals"]["requests"] >= 1
        # The generation was still going after all those answers.
        assert client.call("model.status")["in_flight"]["phase"] == "generating"
        client.call("inference.cancel", {"request_id": running.request_id()})
    result = running.join()
    assert result["stop_reason"] == "cancelled"
    assert result["cancelled_in"] == "generation"
    assert 0 < result["eval_count"] < 2000
    assert "".join(m["text"] for m in running.stream[1:]) == result["text"]


def test_a_full_queue_answers_queue_full_and_queued_requests_can_be_cancelled(
    model_daemon: DaemonProcess,
) -> None:
    params = {"prompt": COUNTING_PROMPT, "max_tokens": 2000, "temperature": 0, "stream": True}
    running = Background(model_daemon.socket_path, "inference.generate", params)
    wait_for(lambda: len(running.stream) >= 2)
    waiting = Background(
        model_daemon.socket_path, "inference.generate", {**params, "priority": "background"}
    )
    wait_for(lambda: waiting.stream)
    assert waiting.stream[0]["position"] == 1
    status = model_daemon.call("model.status")
    assert status["queue_depth"] == 1
    assert status["queue"][0]["request_id"] == waiting.request_id()
    assert status["queue"][0]["position"] == 1
    assert status["in_flight"]["request_id"] == running.request_id()

    started = time.monotonic()
    with pytest.raises(QueueFull) as info:
        model_daemon.call("inference.generate", params)
    assert info.value.data["depth"] == 1
    assert time.monotonic() - started < 5  # refused at once, not after the running request

    model_daemon.call("inference.cancel", {"request_id": waiting.request_id()})
    queued_result = waiting.join()
    assert queued_result["stop_reason"] == "cancelled"
    assert queued_result["cancelled_in"] == "queue"
    assert queued_result["text"] == ""
    model_daemon.call("inference.cancel", {"request_id": running.request_id()})
    assert running.join()["stop_reason"] == "cancelled"
    with pytest.raises(NotFound):
        model_daemon.call("inference.cancel", {"request_id": running.request_id()})


def test_a_prompt_longer_than_the_context_is_invalid_params(model_daemon: DaemonProcess) -> None:
    with pytest.raises(InvalidParams) as info:
        model_daemon.call("inference.generate", {"prompt": "word " * 3000}, timeout=60)
    assert info.value.data["param"] == "prompt"
    assert info.value.data["n_ctx"] == 2048
    assert info.value.data["prompt_tokens"] > 2048
    assert "2048" in info.value.message


@pytest.mark.parametrize(
    ("method", "params", "param"),
    [
        ("inference.generate", {}, "prompt"),
        ("inference.generate", {"prompt": "  "}, "prompt"),
        ("inference.generate", {"prompt": "x", "temperature": -1}, "temperature"),
        ("inference.generate", {"prompt": "x", "top_p": 0}, "top_p"),
        ("inference.generate", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("inference.generate", {"prompt": "x", "seed": -3}, "seed"),
        ("inference.generate", {"prompt": "x", "stop": [1]}, "stop"),
        ("inference.generate", {"prompt": "x", "priority": "urgent"}, "priority"),
        ("inference.generate", {"prompt": "x", "n_gpu_layers": 9}, "n_gpu_layers"),
        ("inference", {"prompt": 5}, "prompt"),
        ("inference.chat", {"messages": []}, "messages"),
        ("inference.chat", {"messages": [{"role": "user"}]}, "messages"),
        ("inference.cancel", {}, "request_id"),
    ],
)
def test_bad_params_name_the_param(
    model_daemon: DaemonProcess, method: str, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidParams) as info:
        model_daemon.call(method, params)
    assert info.value.data["param"] == param
