"""Calling into a plugin: one worker process per call, killed at its deadline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
MAX_ANSWER = 1 << 20


class PluginCallFailed(Exception):
    """The plugin raised, hung past its timeout, or answered garbage."""


def call_plugin(main: str, op: str, args: dict[str, Any], timeout: float) -> Any:
    """Run `op` of the plugin whose main file is `main` in a fresh worker; blocking.

    The worker runs isolated (`python -I`: no environment-driven imports, no
    user site; `-B`: no bytecode written into the plugin directory) in its own
    process group, which is killed at `timeout`.

    Raises:
        PluginCallFailed: with the plugin's error, or the timeout.
    """
    request = json.dumps({"main": main, "op": op, "args": args})
    proc = subprocess.Popen(
        [sys.executable, "-I", "-B", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
    )
    try:
        stdout, stderr = proc.communicate(request.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise PluginCallFailed(f"timed out after {timeout:g}s (worker killed)") from None
    finally:
        if proc.poll() is None:
            _kill(proc)
            proc.wait()
    if len(stdout) > MAX_ANSWER:
        raise PluginCallFailed(f"answer larger than {MAX_ANSWER} bytes")
    try:
        answer = json.loads(stdout)
    except ValueError:
        tail = stderr.decode(errors="replace").strip()[-500:]
        raise PluginCallFailed(
            f"worker exited {proc.returncode} without an answer: {tail}"
        ) from None
    if not answer.get("ok"):
        raise PluginCallFailed(str(answer.get("error")))
    return answer.get("result")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
