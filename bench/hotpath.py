"""Profile the daemon's request path under load with cProfile.

`ipc.py --profile FILE` runs one extra daemon under `python -m cProfile -o
FILE`, drives it with the same closed-loop clients as the benchmark, stops it
with SIGTERM (the daemon exits cleanly, so cProfile writes FILE) and prints
the functions with the most own time. The profiled run is slower than a
normal one; its figures are not reported as throughput.
"""

from __future__ import annotations

import io
import os
import pstats

from loadgen import Job, LoadGenerator
from servers import start_daemon, wait_idle, workspace

TOP_FUNCTIONS = 30


def profile_daemon(
    gen: LoadGenerator,
    out_path: str,
    method: str,
    clients: int,
    duration: float,
    settle: float,
) -> str:
    """Drive a cProfile'd daemon with `clients` clients calling `method`; return the summary.

    Raises:
        RuntimeError: the daemon did not start or exited badly, or the load failed.
    """
    out_path = os.path.abspath(out_path)
    with workspace() as workdir:
        daemon = start_daemon(workdir, prefix=("-m", "cProfile", "-o", out_path))
        try:
            wait_idle(daemon.pid, min_uptime=settle)
            result = gen.run(Job(daemon.socket_path, method, clients, 0.5, duration))
        finally:
            status = daemon.stop()
        if status != 0 or not os.path.exists(out_path):
            raise RuntimeError(f"profiled daemon exited with {status}\n{daemon.log_tail()}")
    text = io.StringIO()
    stats = pstats.Stats(out_path, stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(TOP_FUNCTIONS)
    header = (
        f"cProfile of cortexd under {clients} clients calling {method}: "
        f"{result.throughput:,.0f} req/s while profiled; raw data in {out_path}\n"
    )
    return header + text.getvalue()
