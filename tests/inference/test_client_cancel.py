"""The client library cancels on the daemon what its caller gives up, with the real
model: an AsyncClient call cancelled mid-generation, and a blocking Client call
interrupted with Ctrl-C (SIGINT), both free the single worker at once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys

import anyio

from cortexctl import AsyncClient
from tests.daemon import DaemonProcess
from tests.inference.conftest import interruptible, wait_for
from tests.inference.helpers import COUNTING_PROMPT, LONG_PROMPT

CLI_TIMEOUT = 120
# Far more than the worker produces before the test cancels it.
MANY_TOKENS = 5000
POLL = 0.02


def in_flight(daemon: DaemonProcess) -> dict[str, str] | None:
    flight: dict[str, str] | None = daemon.call("model.status")["in_flight"]
    return flight


async def test_a_cancelled_async_call_stops_the_generation(model_daemon: DaemonProcess) -> None:
    before = model_daemon.call("model.status")["totals"]["cancelled"]
    params = {"prompt": COUNTING_PROMPT, "max_tokens": MANY_TOKENS, "temperature": 0}
    async with AsyncClient(model_daemon.socket_path, timeout=CLI_TIMEOUT) as client:
        task = asyncio.create_task(client.call("inference.generate", params))

        async def phase() -> str | None:
            flight = (await client.call("model.status"))["in_flight"]
            return None if flight is None else str(flight["phase"])

        async def until(wanted: str | None) -> None:
            # Polling the daemon: its status offers nothing to wait on.
            with anyio.fail_after(CLI_TIMEOUT):
                while await phase() != wanted:  # noqa: ASYNC110
                    await anyio.sleep(POLL)

        await until("generating")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # The worker is free long before 5000 tokens, and the same connection
        # serves on (the request was named to inference.cancel).
        await until(None)
        totals = (await client.call("model.status"))["totals"]
    assert totals["cancelled"] == before + 1
    assert totals["generated_tokens"] < MANY_TOKENS


def test_ctrl_c_in_a_blocking_call_stops_the_request(model_daemon: DaemonProcess) -> None:
    before = model_daemon.call("model.status")["totals"]["cancelled"]
    # A program that survives Ctrl-C and keeps its client (a REPL, say). No
    # stream: it never learns the request's id, so only the client closing
    # its connection can tell the daemon.
    program = (
        "import sys\n"
        "from cortexctl import Client\n"
        "with Client(sys.argv[1], timeout=600) as client:\n"
        "    try:\n"
        "        client.call('inference.generate', {'prompt': sys.argv[2], 'max_tokens': 8})\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", program, model_daemon.socket_path, LONG_PROMPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            wait_for(lambda: (in_flight(model_daemon) or {}).get("phase") == "prompt")
            proc.send_signal(signal.SIGINT)
            assert proc.stdout.readline() == "interrupted\n"
            # The program still runs; the daemon has already dropped its request.
            wait_for(lambda: in_flight(model_daemon) is None)
            assert proc.poll() is None
            assert model_daemon.call("model.status")["totals"]["cancelled"] == before + 1
            proc.stdin.close()
            assert proc.wait(timeout=CLI_TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
