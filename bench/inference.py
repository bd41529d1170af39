"""Inference benchmark: the daemon beside llama-cpp-python called directly, in one run.

Run: `CORTEX_TEST_MODEL=… .venv/bin/python bench/inference.py [--rounds N] [--nice N] [--json]`.

What it measures, all on this machine in the same run:

- tokens/s, time to first token and total time for the same prompts and
  greedy settings through the daemon (client-observed, streaming over the
  socket from the daemon, which relays what its runner process generates)
  and through `Llama.create_completion(stream=True)` in this process,
  interleaved prompt by prompt so machine noise hits both alike; the ratios
  daemon/direct (aims: tokens/s ≥ 0.97, TTFT overhead ≤ 5 ms). Both use one
  llama.cpp thread at the same nice level (this process takes the runner's,
  `inference.nice`) and start each request from an empty KV cache (the
  daemon always does; the direct model is reset so its prefix cache cannot
  help it);
- cancel-to-free latency: a long prompt is cancelled while llama.cpp is
  evaluating it; time from sending `inference.cancel` to the final response;
- `ping` p50/p99 on an idle daemon and while a generation runs (aim: p99 ≤ 2 ms);
- the daemon's RSS with the model loaded (aim ≤ 45 MB), and its peak; the
  runner's apart.

It reports and does not judge: a missed aim is printed, not an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.daemon import stop_process

DEFAULT_MODEL = "/var/lib/cortex/models/SmolLM2-135M-Instruct.Q4_1.gguf"
N_CTX = 2048
THREADS = 1
READY_TIMEOUT = 30.0
LOAD_TIMEOUT = 120.0
PROMPTS = (
    ("counting", "1, 2, 3, 4, 5, 6, 7, 8,", 128),
    ("question", "Why would a Linux disk fill up?", 128),
    ("letters", "a, b, c, d, e, f, g, h,", 96),
)
LONG_PROMPT = "word " * 1500
PINGS = 400
# The daemon's default inference.nice; the direct side runs at the same level.
DEFAULT_NICE = 10


class Conn:
    """One blocking JSON-RPC connection that timestamps stream messages."""

    def __init__(self, path: str, timeout: float = 300.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}
        self.sock.sendall(orjson.dumps(message) + b"\n")
        return self.next_id

    def read(self) -> tuple[float, dict[str, Any]]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return time.perf_counter(), orjson.loads(line)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        req = self.send(method, params)
        while True:
            _, message = self.read()
            if message.get("id") == req:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]


@contextlib.contextmanager
def daemon(model: str, nice: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """cortexd serving `model` with one llama.cpp thread, in a temp dir."""
    workdir = tempfile.mkdtemp(prefix="cxi", dir="/tmp")
    sock_path = os.path.join(workdir, "d.sock")
    config = {
        "state_dir": os.path.join(workdir, "state"),
        "server": {"socket_path": sock_path},
        "logging": {"level": "WARN", "target": "stderr"},
        "inference": {"model_path": model, "n_threads": THREADS, "n_ctx": N_CTX, "nice": nice},
    }
    config_path = os.path.join(workdir, "daemon.conf")
    Path(config_path).write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORTEXD_", "NOTIFY_"))}
    log = open(os.path.join(workdir, "daemon.log"), "ab")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortexd", "--config", config_path],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT + LOAD_TIMEOUT
        while True:
            try:
                conn = Conn(sock_path, 5)
                state = conn.call("model.status")["state"]
                conn.close()
                if state == "ready":
                    break
                if state == "failed":
                    raise RuntimeError("the model failed to load")
            except (OSError, ConnectionError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(Path(workdir, "daemon.log").read_text()[-2000:])
            time.sleep(0.05)
        yield proc, sock_path
    finally:
        stop_process(proc, 30)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def through_daemon(path: str, prompt: str, max_tokens: int) -> dict[str, float]:
    conn = Conn(path)
    try:
        params = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        started = time.perf_counter()
        req = conn.send("inference.generate", params)
        first = last = None
        while True:
            at, message = conn.read()
            if message.get("method") == "stream":
                if "text" in message["params"]["data"]:
                    first = first or at
                    last = at
                continue
            if message.get("id") == req:
                result = message["result"]
                break
    finally:
        conn.close()
    assert first is not None and last is not None
    tokens = result["eval_count"]
    return {
        "ttft_ms": (first - started) * 1000,
        "total_ms": (at - started) * 1000,
        "tokens": tokens,
        "tokens_per_second": (tokens - 1) / (last - first) if last > first else 0.0,
        "server_tokens_per_second": result["tokens_per_second"],
        "text": result["text"],
    }


def direct(llm: Any, prompt: str, max_tokens: int) -> dict[str, Any]:
    llm.reset()  # no prefix reuse: the daemon evaluates every prompt in full too
    started = time.perf_counter()
    first = last = None
    pieces = []
    for chunk in llm.create_completion(
        prompt, max_tokens=max_tokens, temperature=0, seed=1, stream=True
    ):
        now = time.perf_counter()
        first = first or now
        last = now
        pieces.append(chunk["choices"][0]["text"])
    ended = time.perf_counter()
    assert first is not None and last is not None
    return {
        "ttft_ms": (first - started) * 1000,
        "total_ms": (ended - started) * 1000,
        "last": last,
        "first": first,
        "text": "".join(pieces),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ping_latencies(path: str, n: int) -> list[float]:
    conn = Conn(path, 10)
    out = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            conn.call("ping")
            out.append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    return out


def ping_while_generating(path: str) -> list[float]:
    done = threading.Event()

    def generate() -> None:
        with contextlib.suppress(Exception):
            through_daemon(path, PROMPTS[0][1], 1000)
        done.set()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    time.sleep(0.5)  # into the generation phase
    latencies = ping_latencies(path, PINGS)
    still_running = not done.is_set()
    conn = Conn(path, 10)
    flight = conn.call("model.status")["in_flight"]
    if flight:
        conn.call("inference.cancel", {"request_id": flight["request_id"]})
    conn.close()
    thread.join(60)
    if not still_running:
        print("warning: the generation ended before the pings did", file=sys.stderr)
    return latencies


def cancel_to_free(path: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        conn = Conn(path)
        watcher = Conn(path, 10)
        try:
            req = conn.send(
                "inference.generate", {"prompt": LONG_PROMPT, "max_tokens": 4, "stream": True}
            )
            _, first = conn.read()
            request_id = first["params"]["data"]["request_id"]
            while (watcher.call("model.status")["in_flight"] or {}).get("phase") != "prompt":
                time.sleep(0.005)
            time.sleep(0.2)  # well inside llama_decode
            started = time.perf_counter()
            watcher.call("inference.cancel", {"request_id": request_id})
            while True:
                at, message = conn.read()
                if message.get("id") == req:
                    assert message["result"]["stop_reason"] == "cancelled"
                    break
            out.append((at - started) * 1000)
        finally:
            conn.close()
            watcher.close()
    return out


def rss(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) * 1024
    return {"rss_bytes": fields["VmRSS"], "peak_rss_bytes": fields["VmHWM"]}


def runner_pid(path: str) -> int:
    conn = Conn(path, 10)
    try:
        pid = conn.call("model.status")["runner"]["pid"]
    finally:
        conn.close()
    assert isinstance(pid, int)
    return pid


def run(model: str, rounds: int, nice: int) -> dict[str, Any]:
    # Before llama.cpp starts its threads: on Linux a nice value is per thread.
    if os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    from llama_cpp import Llama

    llm = Llama(model, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    figures: dict[str, Any] = {"model": model, "threads": THREADS, "rounds": rounds, "nice": nice}
    with daemon(model, nice) as (proc, path):
        runner = runner_pid(path)
        figures["rss_loaded"] = rss(proc.pid)
        figures["runner_rss_loaded"] = rss(runner)
        rows: dict[str, dict[str, list[float]]] = {}
        mismatches = 0
        for round_no in range(rounds):
            for name, prompt, max_tokens in PROMPTS:
                # Alternate who goes first, so neither side always runs on a warmer cache.
                if round_no % 2:
                    x = direct(llm, prompt, max_tokens)
                    d = through_daemon(path, prompt, max_tokens)
                else:
                    d = through_daemon(path, prompt, max_tokens)
                    x = direct(llm, prompt, max_tokens)
                mismatches += d["text"] != x["text"]
                tokens = d["tokens"]
                x_rate = (tokens - 1) / (x["last"] - x["first"]) if x["last"] > x["first"] else 0
                row = rows.setdefault(name, {k: [] for k in ("d_tps", "x_tps", "d_ttft", "x_ttft")})
                row.setdefault("d_total", []).append(d["total_ms"])
                row.setdefault("x_total", []).append(x["total_ms"])
                row["d_tps"].append(d["tokens_per_second"])
                row.setdefault("s_tps", []).append(d["server_tokens_per_second"])
                row["x_tps"].append(x_rate)
                row["d_ttft"].append(d["ttft_ms"])
                row["x_ttft"].append(x["ttft_ms"])
        med = statistics.median
        figures["prompts"] = {
            name: {
                "daemon_tokens_per_second": round(med(r["d_tps"]), 1),
                "direct_tokens_per_second": round(med(r["x_tps"]), 1),
                "daemon_reported_tokens_per_second": round(med(r["s_tps"]), 1),
                "tokens_per_second_ratio": round(med(r["d_tps"]) / med(r["x_tps"]), 3),
                "daemon_ttft_ms": round(med(r["d_ttft"]), 2),
                "direct_ttft_ms": round(med(r["x_ttft"]), 2),
                "ttft_overhead_ms": round(med(r["d_ttft"]) - med(r["x_ttft"]), 2),
                "daemon_total_ms": round(med(r["d_total"]), 1),
                "direct_total_ms": round(med(r["x_total"]), 1),
                "total_ratio": round(med(r["d_total"]) / med(r["x_total"]), 3),
            }
            for name, r in rows.items()
        }
        figures["outputs_differing"] = mismatches
        idle = ping_latencies(path, PINGS)
        busy = ping_while_generating(path)
        figures["ping_ms"] = {
            "idle_p50": round(percentile(idle, 0.5), 3),
            "idle_p99": round(percentile(idle, 0.99), 3),
            "generating_p50": round(percentile(busy, 0.5), 3),
            "generating_p99": round(percentile(busy, 0.99), 3),
        }
        cancels = cancel_to_free(path, max(3, rounds))
        figures["cancel_to_free_ms"] = {
            "median": round(med(cancels), 1),
            "max": round(max(cancels), 1),
        }
        figures["rss_after"] = rss(proc.pid)
        figures["runner_rss_after"] = rss(runner_pid(path))
    llm.close()
    return figures


def report(figures: dict[str, Any]) -> None:
    print(
        f"model {figures['model']} — {figures['threads']} thread at nice {figures['nice']}, "
        f"{figures['rounds']} rounds"
    )
    print(
        f"{'prompt':<10} {'tok/s d/x':>15} {'ratio':>6} {'TTFT ms d/x':>15} "
        f"{'over':>6} {'total ms d/x':>17} {'ratio':>6}"
    )
    for name, p in figures["prompts"].items():
        print(
            f"{name:<10} {p['daemon_tokens_per_second']:>7} / {p['direct_tokens_per_second']:<5}"
            f" {p['tokens_per_second_ratio']:>6}"
            f" {p['daemon_ttft_ms']:>7} / {p['direct_ttft_ms']:<6}"
            f" {p['ttft_overhead_ms']:>6} {p['daemon_total_ms']:>8} / {p['direct_total_ms']:<7}"
            f" {p['total_ratio']:>6}"
        )
    ping = figures["ping_ms"]
    print(
        f"ping ms: idle p50 {ping['idle_p50']} p99 {ping['idle_p99']}; "
        f"while generating p50 {ping['generating_p50']} p99 {ping['generating_p99']} (aim p99 ≤ 2)"
    )
    c = figures["cancel_to_free_ms"]
    print(f"cancel during prompt processing → worker free: median {c['median']} ms, max {c['max']}")
    mib = 1024 * 1024
    mb = 1000 * 1000
    print(
        f"daemon RSS with the model loaded: {figures['rss_loaded']['rss_bytes'] / mb:.1f} MB "
        f"(aim ≤ 45 MB); after the run {figures['rss_after']['rss_bytes'] / mb:.1f} MB "
        f"(peak {figures['rss_after']['peak_rss_bytes'] / mb:.1f} MB)"
    )
    print(
        f"runner RSS with the model loaded: {figures['runner_rss_loaded']['rss_bytes'] / mib:.0f}"
        f" MiB; after the run {figures['runner_rss_after']['rss_bytes'] / mib:.0f} MiB "
        f"(peak {figures['runner_rss_after']['peak_rss_bytes'] / mib:.0f} MiB)"
    )
    print(f"outputs differing between daemon and direct: {figures['outputs_differing']}")
    ratios = [p["tokens_per_second_ratio"] for p in figures["prompts"].values()]
    overheads = [p["ttft_overhead_ms"] for p in figures["prompts"].values()]
    print(
        f"aims: tokens/s ratio ≥ 0.97: min {min(ratios)}; "
        f"TTFT overhead ≤ 5 ms: max {max(overheads)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("CORTEX_TEST_MODEL", DEFAULT_MODEL))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--nice",
        type=int,
        default=DEFAULT_NICE,
        help="the runner's inference.nice, and this process's for the direct side",
    )
    args = parser.parse_args()
    figures = run(args.model, args.rounds, args.nice)
    if args.json:
        sys.stdout.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        report(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
