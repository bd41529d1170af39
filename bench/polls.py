"""In-process cost of answering the polled methods: `ping`, `status`, `health`.

Builds a daemon from a default config in a temporary directory (components
built, not started: no socket, no checks run), then times each method's
handler plus the encoding of its answer frame, best of 5 rounds of 20,000.
This isolates the per-request work of the handler from the socket and the
event loop, which `ipc.py` measures end to end.

Run: `.venv/bin/python bench/polls.py`; with `PYTHONPATH=DIR` it measures the
cortexd found in DIR (e.g. a `git archive` of an older commit).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

from cortexd.app import Daemon
from cortexd.config import load_config
from cortexd.server.framing import dumps

CALLS = 20_000
ROUNDS = 5
METHODS = ("ping", "status", "health")


def main() -> int:
    """Print µs per answer and the answer's size for each polled method."""
    workdir = tempfile.mkdtemp(prefix="cxp", dir="/tmp")
    try:
        config = Path(workdir) / "daemon.conf"
        config.write_text(f"state_dir: {workdir}/state\nserver:\n  socket_path: {workdir}/s.sock\n")
        daemon = Daemon(load_config(str(config)))
        daemon.install_features()
        for method in METHODS:
            daemon.stats.record(method, None, 0.0)
        for method in METHODS:
            handler = daemon.registry.get(method).handler

            def answer(handler: Any = handler) -> bytes:
                return dumps({"jsonrpc": "2.0", "id": 1, "result": handler(None)})

            best = min(timeit.repeat(answer, number=CALLS, repeat=ROUNDS)) / CALLS
            print(f"{method:7} {best * 1e6:7.2f} µs per answer, {len(answer())} bytes")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
