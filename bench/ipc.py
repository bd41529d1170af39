"""IPC benchmark: the daemon beside a minimal echo server, plus start-up, RSS and CLI time.

Run: `make bench`, or `.venv/bin/python bench/ipc.py [--quick] [--json]`.

What it measures (docs/performance.md), all in one run on this machine:

- `ping`, `status` and `health` throughput and p50/p99 latency over persistent
  connections at 1, 16, 64 and 256 closed-loop clients, against the daemon
  and against `echo_server.py` (the practical ceiling for Python), with the
  daemon/echo ratios;
- 1,000 idle connections held open while `ping` is answered on a new one;
- `cortexctl status` wall and CPU time beside `python -c pass` and a bare
  socket client doing the same call (`--cli-only` measures just this);
- idle RSS and CPU with no model configured (and that llama_cpp and numpy
  are not loaded), and process start to `READY=1` beside `python -c pass`.

It reports and does not judge: a missed aim is printed, not an exit status.
Exit status 1 means the benchmark itself broke (a server did not start, a
request failed).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
from hotpath import profile_daemon
from loadgen import CellResult, Job, LoadGenerator, default_processes, merge
from report import Aim, print_cli_report, print_json, print_report, progress
from servers import (
    Running,
    call,
    line_call,
    python_pass_seconds,
    start_daemon,
    start_echo,
    wait_idle,
    workspace,
)

DEFAULT_CLIENTS = (1, 16, 64, 256)
METHODS = ("ping", "status", "health")
# The aims at 64 clients, as ratios to the echo server: throughput at least,
# p99 at most. `status` and `health` are what monitoring polls: little more
# than a ping.
AIMS_64 = {"ping": (0.8, 1.5), "status": (0.6, 2.0), "health": (0.6, 2.0)}
READY_VS_ECHO = 2.0
IDLE_RSS_MB = 35.0
IDLE_CONNECTIONS = 1000
IDLE_PINGS = 500
IDLE_SETTLE = 1.0
SETTLE_SECONDS = 45.0
FD_MARGIN = 256
# Shared objects whose presence in the daemon's maps means a heavy import happened.
HEAVY_LIBRARIES = ("libllama", "llama_cpp", "numpy")


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run measures and how, from the command line."""

    clients: tuple[int, ...]
    duration: float
    rounds: int
    warmup: float
    processes: int
    idle_connections: int
    runs: int
    settle: float
    as_json: bool
    cli_only: bool
    profile: str | None
    from_json: str | None
    markdown: bool


def parse_args(argv: list[str] | None) -> Settings:
    """Settings from the command line; exits with status 2 on bad usage."""
    parser = argparse.ArgumentParser(
        description="cortexd IPC benchmark (docs/performance.md).",
        epilog="Example: .venv/bin/python bench/ipc.py --quick --json > figures.json",
    )
    parser.add_argument("--quick", action="store_true", help="short cells, fewer runs")
    parser.add_argument(
        "--duration", type=float, help="measured seconds per round of a cell (default 2)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per cell, alternating the servers; samples are pooled (default 3)",
    )
    parser.add_argument("--warmup", type=float, help="unmeasured seconds per cell (default 0.5)")
    parser.add_argument(
        "--clients",
        default=",".join(map(str, DEFAULT_CLIENTS)),
        help="comma-separated client counts (default 1,16,64,256)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=default_processes(),
        help="load generator worker processes (default: one per core but the server's)",
    )
    parser.add_argument(
        "--idle-connections", type=int, default=IDLE_CONNECTIONS, help="idle connections to hold"
    )
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds the daemon runs before anything is measured on it (default 45, "
        "5 with --quick: by 45 s the monitor's first round, package checks included, is over)",
    )
    parser.add_argument("--runs", type=int, help="runs for start-up and CLI medians (default 11)")
    parser.add_argument("--json", action="store_true", help="print figures as JSON on stdout")
    parser.add_argument(
        "--cli-only",
        action="store_true",
        help="measure only `cortexctl status` against python -c pass and the bare client",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="print the table for figures saved earlier with --json; measure nothing",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="also run a daemon under cProfile at 64 ping clients; save the stats to FILE",
    )
    args = parser.parse_args(argv)
    try:
        clients = tuple(int(c) for c in args.clients.split(",") if c.strip())
    except ValueError:
        parser.error("--clients takes comma-separated integers")
    if not clients or min(clients) < 1:
        parser.error("--clients needs at least one positive count")
    return Settings(
        clients=clients,
        duration=args.duration or (1.0 if args.quick else 2.0),
        rounds=max(1, args.rounds or (1 if args.quick else 3)),
        warmup=args.warmup if args.warmup is not None else (0.2 if args.quick else 0.5),
        processes=max(1, args.processes),
        idle_connections=args.idle_connections,
        runs=args.runs or (5 if args.quick else 11),
        settle=args.settle if args.settle is not None else (5.0 if args.quick else SETTLE_SECONDS),
        as_json=args.json,
        cli_only=args.cli_only,
        profile=args.profile,
        from_json=args.from_json,
        markdown=args.markdown,
    )


def machine() -> dict[str, Any]:
    """CPU count and model, Python, kernel and load average of this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
    }


def daemon_source() -> dict[str, Any]:
    """Which cortexd the daemon processes import, and its git revision if in a checkout."""
    with workspace() as workdir:
        found = subprocess.run(
            [sys.executable, "-c", "import cortexd; print(cortexd.__file__)"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    tree = str(Path(found).parent.parent)
    head = subprocess.run(
        ["git", "-C", tree, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return {"path": tree, "revision": "not a git checkout"}
    changed = subprocess.run(
        ["git", "-C", tree, "status", "--porcelain", "--", "cortexd", "cortexctl"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    revision = head.stdout.strip() + (" with uncommitted changes" if changed else "")
    return {"path": tree, "revision": revision}


def cell_figures(result: CellResult) -> dict[str, Any]:
    """One server's figures for one cell, JSON-ready."""
    return {
        "requests": result.requests,
        "throughput": result.throughput,
        "p50_ms": result.percentile_ms(0.50),
        "p99_ms": result.percentile_ms(0.99),
        "errors": result.errors,
        "generator_cpu": result.generator_cpu,
        "server_cpu": result.server_cpu,
        "other_cpu": result.other_cpu,
        # CPU per answer moves less than req/s when other work shares the machine.
        "server_cpu_us_per_request": 1e6 * result.server_cpu / result.throughput
        if result.requests
        else float("nan"),
    }


def run_cells(
    settings: Settings, gen: LoadGenerator, daemon: Running, echo: Running
) -> list[dict[str, Any]]:
    """Every (method, clients) cell against both servers, back to back."""
    cells = []
    for method in METHODS:
        for clients in settings.clients:
            figures: dict[str, Any] = {"method": method, "clients": clients}
            runs: dict[str, list[CellResult]] = {daemon.name: [], echo.name: []}
            for round_ in range(settings.rounds):
                # Alternate which server goes first, so neither always runs in
                # the other's wake or in the same slice of outside load.
                order = (daemon, echo) if round_ % 2 == 0 else (echo, daemon)
                for server in order:
                    job = Job(
                        server.socket_path, method, clients, settings.warmup, settings.duration
                    )
                    result = gen.run(job, server.pid)
                    if result.errors:
                        raise RuntimeError(
                            f"{server.name} answered {result.errors} errors to {method}"
                        )
                    runs[server.name].append(result)
            for name, results in runs.items():
                figures[name] = cell_figures(merge(results))
            d, e = figures["cortexd"], figures["echo"]
            figures["throughput_ratio"] = d["throughput"] / e["throughput"]
            figures["p99_ratio"] = d["p99_ms"] / e["p99_ms"]
            progress(
                f"  {method:6} {clients:4} clients: cortexd {d['throughput']:8.0f}/s "
                f"p99 {d['p99_ms']:.3f} ms | echo {e['throughput']:8.0f}/s "
                f"p99 {e['p99_ms']:.3f} ms"
            )
            cells.append(figures)
    return cells


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to hold `needed` sockets (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + FD_MARGIN
    if soft < want:
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def idle_connections(daemon: Running, count: int) -> dict[str, Any]:
    """Hold `count` idle connections; time `ping` on a new one; check the held ones live."""
    raise_fd_limit(count)
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10.0)
            sock.connect(daemon.socket_path)
            held.append(sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fresh:
            fresh.settimeout(10.0)
            started = time.perf_counter()
            fresh.connect(daemon.socket_path)
            line_call(fresh, "ping")
            first_ms = (time.perf_counter() - started) * 1000
            samples = []
            for _ in range(IDLE_PINGS):
                t0 = time.perf_counter_ns()
                line_call(fresh, "ping")
                samples.append(time.perf_counter_ns() - t0)
            status = line_call(fresh, "status")["result"]
        open_seen = status["server"]["connections_open"]
        # A held connection that the daemon dropped would fail here.
        step = max(1, count // 50)
        for sock in held[::step]:
            line_call(sock, "ping")
        samples.sort()
        rss = psutil.Process(daemon.pid).memory_info().rss
        return {
            "held": count,
            "connections_open_seen": open_seen,
            "first_ping_ms": first_ms,
            "ping_p50_ms": samples[len(samples) // 2] / 1e6,
            "ping_p99_ms": samples[int(len(samples) * 0.99) - 1] / 1e6,
            "held_sampled_ok": len(held[::step]),
            "rss_mb": rss / 2**20,
        }
    finally:
        for sock in held:
            sock.close()


# The least a Python program can do to get `status`: one socket, one line each way.
_BARE_CLIENT = (
    "import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
    's.sendall(b\'{"jsonrpc":"2.0","id":1,"method":"status"}\\n\');'
    "b=b''\nwhile not b.endswith(b'\\n'):b+=s.recv(65536)\nprint(b.decode())"
)


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of running `cmd` to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _installed_env() -> dict[str, str]:
    """The environment, but with bytecode caching as an installed package has it.

    An install compiles every module (pip writes the .pyc files); a checkout
    run with PYTHONDONTWRITEBYTECODE would compile cortexctl's modules on
    every call instead and measure the compiler.
    """
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def cli_status(daemon: Running, runs: int) -> dict[str, Any]:
    """Median wall and CPU time of `cortexctl status`, interleaved with `python -c pass`
    and a bare socket client doing the same call (the floor for any Python CLI)."""
    found = shutil.which("cortexctl", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("cortexctl not found beside the interpreter; run `make bench`")
    cortexctl = [found, "--socket", daemon.socket_path, "status"]
    env = _installed_env()
    _timed(cortexctl, env)  # writes the bytecode, as an install would have
    # TAB in a shell: every parser built, and alert ids asked of the daemon.
    complete = [found, "__complete", "al"]
    complete_ids = [found, "__complete", "--socket", daemon.socket_path, "alerts", "show", ""]
    timings: dict[str, list[tuple[float, float]]] = {
        "cli": [],
        "pass": [],
        "bare": [],
        "complete": [],
        "complete_ids": [],
    }
    # A cortexctl from before completion existed (PYTHONPATH=an older tree) is timed without it.
    completes = subprocess.run(complete, env=env, capture_output=True, check=False).returncode == 0
    for _ in range(runs):
        timings["cli"].append(_timed(cortexctl, env))
        if completes:
            timings["complete"].append(_timed(complete, env))
            timings["complete_ids"].append(_timed(complete_ids, env))
        timings["pass"].append(_timed([sys.executable, "-c", "pass"], env))
        timings["bare"].append(
            _timed([sys.executable, "-c", _BARE_CLIENT, daemon.socket_path], env)
        )
    wall = {k: statistics.median(w for w, _ in v) * 1000 for k, v in timings.items() if v}
    cpu = {k: statistics.median(c for _, c in v) * 1000 for k, v in timings.items() if v}
    figures = {
        "cortexctl_status_ms": wall["cli"],
        "python_pass_ms": wall["pass"],
        "bare_client_ms": wall["bare"],
        "ratio": wall["cli"] / wall["pass"],
        "ratio_to_bare_client": wall["cli"] / wall["bare"],
        "cpu_ms": cpu,
        "cpu_ratio": cpu["cli"] / cpu["pass"],
        "cpu_ratio_to_bare_client": cpu["cli"] / cpu["bare"],
    }
    if completes:
        figures["completion_ms"] = wall["complete"]
        figures["completion_from_daemon_ms"] = wall["complete_ids"]
    return figures


def cli_aims(cli: dict[str, Any]) -> list[Aim]:
    """The CLI's two aims: against `python -c pass` and against the bare client."""
    return [
        Aim("cortexctl status vs python -c pass", cli["ratio"], 2.5, below=True),
        Aim(
            "cortexctl status vs a bare socket client", cli["ratio_to_bare_client"], 1.3, below=True
        ),
    ]


def heavy_libraries(pid: int) -> list[str]:
    """Which of HEAVY_LIBRARIES are mapped into process `pid`."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({name for name in HEAVY_LIBRARIES if name in maps})


def startup(runs: int) -> dict[str, Any]:
    """Start to READY=1 (median of `runs`) beside `python -c pass` and the echo server's start."""
    ready, bare, echo = [], [], []
    for _ in range(runs):
        with workspace() as workdir:
            daemon = start_daemon(workdir)
            try:
                ready.append(daemon.ready_seconds)
                # READY=1 must mean "answers": check it, which also lets the
                # daemon finish starting before it is told to stop.
                call(daemon.socket_path, "ping")
            finally:
                daemon.stop()
            # The floor for any anyio server on this machine: start to listening.
            server = start_echo(workdir)
            server.stop()
            echo.append(server.ready_seconds)
        bare.append(python_pass_seconds())
    ready_ms, bare_ms = statistics.median(ready) * 1000, statistics.median(bare) * 1000
    return {
        "ready_ms": ready_ms,
        "python_pass_ms": bare_ms,
        "ratio": ready_ms / bare_ms,
        "echo_listening_ms": statistics.median(echo) * 1000,
    }


def settle(daemon: Running, min_uptime: float) -> dict[str, Any]:
    """Let the daemon finish its start-up work, then measure it idle: RSS, CPU, libraries."""
    waited, settled = wait_idle(daemon.pid, min_uptime=min_uptime)
    if not settled:
        progress(f"warning: cortexd still busy after {waited:.0f} s; measuring anyway")
    proc = psutil.Process(daemon.pid)
    cpu_before = sum(proc.cpu_times()[:2])
    time.sleep(IDLE_SETTLE)
    cpu = sum(proc.cpu_times()[:2]) - cpu_before
    memory = proc.memory_full_info()
    return {
        "rss_mb": memory.rss / 2**20,
        "uss_mb": memory.uss / 2**20,
        "cpu_percent": 100 * cpu / IDLE_SETTLE,
        "threads": proc.num_threads(),
        "heavy_libraries": heavy_libraries(daemon.pid),
        "settle_seconds": waited,
        "settled": settled,
        "components": sorted(call(daemon.socket_path, "status")["result"]["components"]),
    }


def aims(figures: dict[str, Any]) -> list[Aim]:
    """Each aim beside the measured figure."""
    out: list[Aim] = []
    by = {(c["method"], c["clients"]): c for c in figures["cells"]}
    for method in METHODS:
        if cell := by.get((method, 64)):
            throughput, p99 = AIMS_64[method]
            out.append(
                Aim(
                    f"{method} throughput at 64 clients vs echo",
                    cell["throughput_ratio"],
                    throughput,
                )
            )
            out.append(
                Aim(f"{method} p99 at 64 clients vs echo", cell["p99_ratio"], p99, below=True)
            )
        if cell := by.get((method, 1)):
            out.append(
                Aim(
                    f"{method} p99 at 1 client (ms)",
                    cell["cortexd"]["p99_ms"],
                    1.0,
                    below=True,
                )
            )
    startup = figures["startup"]
    out.append(Aim("idle RSS, no model (MB)", startup["idle"]["rss_mb"], IDLE_RSS_MB, below=True))
    if "echo_listening_ms" in startup:
        ratio = startup["ready_ms"] / startup["echo_listening_ms"]
        out.append(
            Aim("start to READY=1 vs the echo server's start", ratio, READY_VS_ECHO, below=True)
        )
    out.extend(cli_aims(figures["cli"]))
    return out


def measure_cli_only(settings: Settings, figures: dict[str, Any]) -> int:
    """`--cli-only`: a daemon, a few seconds to settle, then the CLI figures."""
    try:
        with workspace() as workdir:
            daemon = start_daemon(workdir)
            try:
                progress(f"letting the daemon run {settings.settle:g} s…")
                wait_idle(daemon.pid, min_uptime=settings.settle)
                progress(f"cortexctl status, {settings.runs} runs…")
                figures["cli"] = cli_status(daemon, settings.runs)
            finally:
                daemon.stop()
    except (RuntimeError, OSError, TimeoutError) as exc:
        progress(f"benchmark failed: {exc}")
        return 1
    figures["machine"]["loadavg_after"] = os.getloadavg()
    figures["aims"] = [a.as_dict() for a in cli_aims(figures["cli"])]
    if settings.as_json:
        print_json(figures)
    else:
        print_cli_report(figures, cli_aims(figures["cli"]), markdown=settings.markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; 0 unless the benchmark itself failed."""
    settings = parse_args(argv)
    if settings.from_json:
        saved = orjson.loads(Path(settings.from_json).read_bytes())
        print_report(saved, aims(saved), markdown=settings.markdown)
        return 0
    figures: dict[str, Any] = {"machine": machine(), "source": daemon_source()}
    if settings.cli_only:
        return measure_cli_only(settings, figures)
    figures["settings"] = {
        "clients": settings.clients,
        "duration": settings.duration,
        "rounds": settings.rounds,
        "warmup": settings.warmup,
        "processes": settings.processes,
        "runs": settings.runs,
        "settle": settings.settle,
    }
    try:
        progress(f"start to READY=1, {settings.runs} runs…")
        figures["startup"] = startup(settings.runs)
        with workspace() as workdir, LoadGenerator(settings.processes) as gen:
            daemon = start_daemon(workdir)
            echo = start_echo(workdir)
            try:
                progress(
                    f"letting the daemon run {settings.settle:g} s and finish its start-up work…"
                )
                figures["startup"]["idle"] = settle(daemon, settings.settle)
                progress(
                    f"IPC cells ({settings.rounds} x {settings.duration:g} s per server,"
                    f" {gen.processes} load generator processes)…"
                )
                figures["cells"] = run_cells(settings, gen, daemon, echo)
                progress(f"{settings.idle_connections} idle connections…")
                figures["idle_connections"] = idle_connections(daemon, settings.idle_connections)
                progress("cortexctl status…")
                figures["cli"] = cli_status(daemon, settings.runs)
                figures["daemon_rss_after_mb"] = (
                    psutil.Process(daemon.pid).memory_info().rss / 2**20
                )
            finally:
                echo.stop()
                status = daemon.stop()
                if status != 0:
                    progress(f"warning: cortexd exited with status {status}\n{daemon.log_tail()}")
            if settings.profile:
                progress("profiling the daemon under 64 ping clients…")
                progress(
                    profile_daemon(
                        gen, settings.profile, "ping", 64, settings.duration, settings.settle
                    )
                )
    except (RuntimeError, OSError, TimeoutError) as exc:
        progress(f"benchmark failed: {exc}")
        return 1
    figures["machine"]["loadavg_after"] = os.getloadavg()
    figures["aims"] = [a.as_dict() for a in aims(figures)]
    if settings.as_json:
        print_json(figures)
    else:
        print_report(figures, aims(figures), markdown=settings.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
