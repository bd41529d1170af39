"""cortexctl ask / model / inference cancel against the real daemon and model.

`cortexctl explain` and `ask --host` are tested in tests/explain.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Any

import orjson

from tests.daemon import DaemonProcess
from tests.inference.conftest import interruptible, wait_for
from tests.inference.helpers import LONG_PROMPT

CLI_TIMEOUT = 120
CLI = (sys.executable, "-m", "cortexctl")


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CORTEX_SOCKET"}
    env["NO_COLOR"] = "1"
    return env


def cortexctl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortexctl", "--socket", d.socket_path, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=cli_env(),
        check=False,
    )


def test_ask_prints_the_answer(model_daemon: DaemonProcess) -> None:
    done = cortexctl(
        model_daemon, "ask", "--temperature", "0", "--max-tokens", "24", "What", "is", "Linux?"
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) > 10


def test_ask_json_gives_the_result_and_statistics(model_daemon: DaemonProcess) -> None:
    for args in (
        ("--json", "ask", "--max-tokens", "8", "Say hi"),
        ("ask", "--json", "--max-tokens", "8", "--system", "Be brief.", "Say hi"),
    ):
        done = cortexctl(model_daemon, *args)
        assert done.returncode == 0, done.stderr
        # JSON lines: each stream message as it came, then the result.
        lines = [orjson.loads(line) for line in done.stdout.splitlines()]
        *streamed, last = lines
        assert all(set(line) == {"stream"} for line in streamed)
        assert "request_id" in streamed[0]["stream"]
        result: dict[str, Any] = last["result"]
        assert "".join(line["stream"].get("text", "") for line in streamed) == result["text"]
        assert result["stop_reason"] in ("stop", "length")
        assert result["eval_count"] <= 8
        assert {"prompt_eval_count", "eval_duration", "ttft_ms", "tokens_per_second"} <= set(result)


def test_ctrl_c_cancels_the_request_on_the_daemon(model_daemon: DaemonProcess) -> None:
    before = model_daemon.call("model.status")["totals"]["cancelled"]
    proc = subprocess.Popen(
        [*CLI, "--socket", model_daemon.socket_path, "ask", LONG_PROMPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        preexec_fn=interruptible,
    )
    try:

        def prompt_running() -> bool:
            flight = model_daemon.call("model.status")["in_flight"]
            return bool(flight and flight["phase"] == "prompt")

        wait_for(prompt_running)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "cancelled" in stderr
    wait_for(lambda: model_daemon.call("model.status")["in_flight"] is None)
    assert model_daemon.call("model.status")["totals"]["cancelled"] == before + 1


def test_model_status_and_cancel_commands(model_daemon: DaemonProcess) -> None:
    done = cortexctl(model_daemon, "model", "status")
    assert done.returncode == 0, done.stderr
    assert "ready" in done.stdout
    assert "2048 tokens" in done.stdout
    pid = model_daemon.call("model.status")["runner"]["pid"]
    assert re.search(rf"runner\s+pid {pid}, \d+ MiB resident", done.stdout), done.stdout
    missing = cortexctl(model_daemon, "inference", "cancel", "nosuchrequest")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr


def test_model_load_resolves_a_relative_path(model_daemon: DaemonProcess, model_path: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cortexctl",
            "--socket",
            model_daemon.socket_path,
            "model",
            "load",
            os.path.basename(model_path),
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=cli_env(),
        cwd=os.path.dirname(model_path),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("loaded ")
