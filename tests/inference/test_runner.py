"""The runner process through the real daemon and the real model: crashes,
restarts, bounds, shutdown and what status reports about it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cortexd.protocol import ModelNotLoaded, ShuttingDown, Unavailable
from tests.daemon import DaemonProcess, running_daemon
from tests.inference.conftest import inference_config, wait_for, wait_state
from tests.inference.helpers import COUNTING_PROMPT, Background
from tests.metrics.helpers import promtool, sample

GENERATE = {"prompt": COUNTING_PROMPT, "max_tokens": 4, "temperature": 0}
LONG = {"prompt": COUNTING_PROMPT, "max_tokens": 3000, "temperature": 0, "stream": True}
MiB = 1024 * 1024


def runner_pid(d: DaemonProcess) -> int:
    pid = d.call("model.status")["runner"]["pid"]
    assert isinstance(pid, int)
    return pid


def gone(pid: int) -> bool:
    """The process has exited (and is not merely a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat fields after the command name (field 3 is the first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def inference_alerts(d: DaemonProcess, state: str) -> list[Any]:
    alerts = d.call("alerts.list", {"state": state, "category": "llm_error"})["alerts"]
    return [a for a in alerts if a["source"] == "inference"]


def test_kill_9_mid_generation_answers_an_error_and_restarts(model_path: str) -> None:
    config = inference_config(model_path, queue_depth=2, restart_backoff_seconds=0.2)
    with running_daemon(config) as d:
        wait_state(d, {"ready"})
        daemon_rss = d.call("model.status")["rss_bytes"]
        pid = runner_pid(d)
        running = Background(d.socket_path, "inference.generate", LONG)
        wait_for(lambda: len(running.stream) >= 3)
        queued = Background(d.socket_path, "inference.generate", {**GENERATE, "stream": True})
        wait_for(lambda: queued.stream)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Unavailable) as info:
            running.join()
        data = info.value.data
        assert data["signal"] == "SIGKILL"
        assert data["during"] == "generating"
        assert data["request_id"] == running.request_id()
        assert isinstance(data["stderr"], list)
        assert info.value.message.startswith("inference runner crashed: SIGKILL while generating")
        assert d.call("ping")["pong"] is True
        # The request that waited in the queue ran on the restarted runner.
        assert queued.join()["text"].startswith(" 9,")
        status = wait_state(d, {"ready"})
        assert status["runner"]["pid"] not in (None, pid)
        assert status["runner"]["restarts"] == 1
        assert status["runner"]["crashes"] == 1
        assert status["runner"]["last_exit"]["how"] == "SIGKILL"
        assert status["last_error"]["reason"] == data["reason"]
        assert gone(pid)
        summary = d.call("status")["components"]["inference"]
        assert summary["restarts"] == 1
        assert summary["last_exit"] == "SIGKILL while generating"
        assert d.call("inference.generate", GENERATE)["text"].startswith(" 9,")
        metrics = d.call("metrics")["text"]
        promtool(metrics)
        assert sample(metrics, "cortex_inference_runner_up ") == 1
        assert sample(metrics, "cortex_inference_runner_pid ") == status["runner"]["pid"]
        assert sample(metrics, "cortex_inference_runner_restarts_total ") == 1
        assert sample(metrics, "cortex_inference_runner_crashes_total ") == 1
        assert (
            'cortex_inference_runner_last_exit_timestamp_seconds{during="generating",how="SIGKILL"}'
            in metrics
        )
        # The crash raised an alert, resolved once a runner served again.
        wait_for(lambda: inference_alerts(d, "resolved"))
        (alert,) = inference_alerts(d, "resolved")
        assert alert["title"].startswith("inference runner crashed: SIGKILL while generating")
        assert alert["labels"] == {"model": model_path}
        assert not inference_alerts(d, "active")
        # llama.cpp and the model live in the runner, not in the daemon.
        assert daemon_rss < status["runner"]["rss_bytes"]
        maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
        assert "libllama" not in maps


def test_the_runner_runs_niced_under_its_memory_limit(model_path: str) -> None:
    config = inference_config(model_path, nice=7, memory_limit_mb=1500)
    with running_daemon(config) as d:
        status = wait_state(d, {"ready"})
        runner = status["runner"]
        pid = runner["pid"]
        assert runner["nice"] == 7
        assert runner["memory_limit_bytes"] == 1500 * MiB
        assert int(proc_stat(pid)[16]) == 7  # field 19: nice
        limits = Path(f"/proc/{pid}/limits").read_text()
        (line,) = [ln for ln in limits.splitlines() if ln.startswith("Max address space")]
        assert line.split()[3:5] == [str(1500 * MiB), str(1500 * MiB)]
        assert d.call("inference.generate", GENERATE)["text"].startswith(" 9,")


def test_the_default_memory_limit_follows_the_model_and_n_ctx(model_path: str) -> None:
    with running_daemon(inference_config(model_path)) as d:
        status = wait_state(d, {"ready"})
        model = status["model"]
        expected = 1024 * MiB + model["size_bytes"] + 2 * model["kv_cache_bytes"]
        assert status["runner"]["memory_limit_bytes"] == expected


def test_a_memory_limit_below_the_model_is_refused_before_the_runner_starts(
    model_path: str,
) -> None:
    with running_daemon(inference_config(model_path, memory_limit_mb=16)) as d:
        status = wait_state(d, {"failed"})
        assert "the runner's memory limit is 16 MiB" in status["reason"]
        assert "raise inference.memory_limit_mb" in status["reason"]
        assert status["runner"]["crashes"] == 0
        assert d.call("ping")["pong"] is True


def test_a_runner_that_runs_out_of_its_memory_limit_says_so(model_path: str) -> None:
    # Above the model and its KV cache (about 140 MiB), so the check before the
    # start lets it through; far below what the runner itself needs.
    config = inference_config(model_path, memory_limit_mb=200, max_load_failures=1)
    with running_daemon(config) as d:
        status = wait_state(d, {"failed"})
        assert "out of memory within the runner's limit of 200 MiB" in status["reason"]
        assert "inference.memory_limit_mb" in status["reason"]
        assert "gave up after 1 failed start" in status["reason"]
        assert d.call("ping")["pong"] is True
        with pytest.raises(ModelNotLoaded) as info:
            d.call("inference.generate", GENERATE)
        assert "out of memory" in info.value.data["reason"]


def test_unload_ends_the_runner_process(model_daemon: DaemonProcess, model_path: str) -> None:
    pid = runner_pid(model_daemon)
    status = model_daemon.call("model.unload", timeout=60)
    assert status["runner"]["pid"] is None
    wait_for(lambda: gone(pid))
    model_daemon.call("model.load", {"path": model_path}, timeout=60)
    assert model_daemon.call("inference.generate", GENERATE)["text"].startswith(" 9,")


def test_sigterm_answers_running_and_queued_requests_before_closing(model_path: str) -> None:
    config = inference_config(model_path, queue_depth=2)
    with running_daemon(config) as d:
        wait_state(d, {"ready"})
        pid = runner_pid(d)
        running = Background(d.socket_path, "inference.generate", LONG)
        wait_for(lambda: len(running.stream) >= 2)
        queued = Background(d.socket_path, "inference.generate", {**GENERATE, "stream": True})
        wait_for(lambda: queued.stream)
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        for request in (running, queued):
            with pytest.raises(ShuttingDown):
                request.join()
        assert d.wait() == 0
        # Answered at once, not after server.shutdown_timeout (10 s) ran out.
        assert time.monotonic() - started < 8
        assert gone(pid)


def test_n_ctx_beyond_the_training_context_needs_to_be_allowed(model_path: str) -> None:
    with running_daemon(inference_config(model_path, n_ctx=16384)) as d:
        status = wait_state(d, {"failed"})
        assert "inference.n_ctx 16384 is beyond the 8192 tokens" in status["reason"]
        assert "inference.allow_ctx_beyond_train: true" in status["reason"]
    allowed = inference_config(model_path, n_ctx=16384, allow_ctx_beyond_train=True)
    with running_daemon(allowed) as d:
        status = wait_state(d, {"ready"})
        assert status["model"]["n_ctx"] == 16384


def test_the_runner_does_not_outlive_a_daemon_killed_with_sigkill(model_path: str) -> None:
    with running_daemon(inference_config(model_path)) as d:
        wait_state(d, {"ready"})
        pid = runner_pid(d)
        d.proc.kill()
        d.proc.wait(30)
        wait_for(lambda: gone(pid))
