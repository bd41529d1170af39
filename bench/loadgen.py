"""A closed-loop load generator over persistent Unix-socket connections.

Each client keeps one request outstanding: it sends, waits for the answer line,
records the round trip and sends again. Clients are spread over worker
processes so the generator does not share a core (or a GIL) with the server
it measures; inside a worker they are bare asyncio protocols, not streams, so
one request costs the generator one send, one receive and a little parsing.

Workers start once and take jobs over a pipe. Every job goes connect → one
priming round trip per connection → barrier (all workers and the parent) →
warm-up → measured window → close. Only answers that arrive inside the
window count; the priming answer is checked to be a JSON-RPC result, and
every later one is checked for an `error` member.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

import orjson
import psutil

BARRIER_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
JOB_SLACK = 30.0
_NEWLINE = b"\n"


@dataclass(frozen=True, slots=True)
class Job:
    """One worker's part of a cell: how many clients call which method, and for how long."""

    socket_path: str
    method: str
    clients: int
    warmup: float
    duration: float


@dataclass(slots=True)
class WorkerResult:
    """What one worker measured; latencies in nanoseconds."""

    latencies: array[int]
    errors: int
    cpu_seconds: float
    failure: str | None = None


class _Client(asyncio.Protocol):
    def __init__(self, request: bytes, window: _Window) -> None:
        self.request = request
        self.window = window
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.sent_ns = 0
        self.checked = False
        loop = asyncio.get_running_loop()
        self.primed: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; nothing is sent until `send`."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self) -> None:
        """Send the request and note when."""
        assert self.transport is not None
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """Record a complete answer and send the next request, until the window ends."""
        # One request is outstanding, so a newline ends its answer.
        if _NEWLINE not in data:
            self.buffer += data
            return
        now = time.perf_counter_ns()
        line = self.buffer + data if self.buffer else data
        self.buffer = b""
        window = self.window
        if not self.checked:
            answer = orjson.loads(line)
            if "result" not in answer:
                window.errors += 1
                window.first_error = window.first_error or line[:300].decode(errors="replace")
            self.checked = True
            # The priming answer: the server has accepted this connection and
            # served it once; the measured loop starts after the barrier.
            self.primed.set_result(None)
            return
        if b'"error":' in line:
            window.errors += 1
        if window.start_ns <= now < window.end_ns:
            window.latencies.append(now - self.sent_ns)
        if now >= window.end_ns:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        """A server that hangs up fails the job instead of leaving it waiting."""
        for future in (self.primed, self.done):
            if not future.done():
                future.set_exception(ConnectionError(f"server closed the connection: {exc}"))


@dataclass(slots=True)
class _Window:
    start_ns: int
    end_ns: int
    latencies: array[int]
    errors: int = 0
    first_error: str | None = None


def _request(method: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method}) + _NEWLINE


async def _run_job(job: Job, barrier: Barrier) -> WorkerResult:
    loop = asyncio.get_running_loop()
    # Far-future window until the barrier opens; nothing is sent before then.
    window = _Window(start_ns=1 << 62, end_ns=1 << 62, latencies=array("q"))
    request = _request(job.method)
    clients: list[_Client] = []
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            for _ in range(job.clients):
                _, proto = await loop.create_unix_connection(
                    lambda: _Client(request, window), job.socket_path
                )
                clients.append(proto)
            # A connect returns once the kernel queued it, not once the server
            # accepted it; one round trip each keeps the accept backlog out of
            # the measured window.
            for client in clients:
                client.send()
            await asyncio.gather(*(c.primed for c in clients))
        # Blocking here is fine: no request is in flight yet.
        barrier.wait(BARRIER_TIMEOUT)
        now = time.perf_counter_ns()
        window.start_ns = now + int(job.warmup * 1e9)
        window.end_ns = window.start_ns + int(job.duration * 1e9)
        cpu_before = time.process_time()
        for client in clients:
            client.send()
        async with asyncio.timeout(job.warmup + job.duration + JOB_SLACK):
            await asyncio.gather(*(c.done for c in clients))
        cpu = time.process_time() - cpu_before
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()
    # The CPU figure covers warm-up too; scale it to the measured window.
    cpu_in_window = cpu * job.duration / (job.warmup + job.duration)
    failure = f"error answer: {window.first_error}" if window.first_error else None
    return WorkerResult(window.latencies, window.errors, cpu_in_window, failure)


def _worker(conn: Connection, barrier: Barrier) -> None:
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            result = asyncio.run(_run_job(job, barrier))
        except Exception as exc:  # reported to the parent, which owns the run
            # Leave the barrier broken so the parent and the other workers stop waiting.
            barrier.abort()
            result = WorkerResult(array("q"), 0, 0.0, f"{type(exc).__name__}: {exc}")
        conn.send(result)


@dataclass(slots=True)
class CellResult:
    """One measured cell: every worker's samples merged."""

    requests: int
    duration: float
    latencies_ns: list[int]
    errors: int
    generator_cpu: float  # all workers' CPU in the window, in cores
    server_cpu: float  # the server's share of one core in the window
    machine_cpu: float  # every process's CPU in the window, in cores

    @property
    def other_cpu(self) -> float:
        """CPU used by neither the server nor the generator: other work on the machine."""
        return max(0.0, self.machine_cpu - self.server_cpu - self.generator_cpu)

    @property
    def throughput(self) -> float:
        """Answers per second in the measured window."""
        return self.requests / self.duration

    def percentile_ms(self, q: float) -> float:
        """The q-quantile (0..1) of the latencies in milliseconds, nearest rank."""
        if not self.latencies_ns:
            return float("nan")
        rank = min(len(self.latencies_ns) - 1, max(0, round(q * len(self.latencies_ns)) - 1))
        return self.latencies_ns[rank] / 1e6


def merge(results: Sequence[CellResult]) -> CellResult:
    """Pool several runs of one cell: requests over total time, percentiles over all samples."""
    duration = sum(r.duration for r in results)
    return CellResult(
        requests=sum(r.requests for r in results),
        duration=duration,
        latencies_ns=sorted(x for r in results for x in r.latencies_ns),
        errors=sum(r.errors for r in results),
        generator_cpu=sum(r.generator_cpu * r.duration for r in results) / duration,
        server_cpu=sum(r.server_cpu * r.duration for r in results) / duration,
        machine_cpu=sum(r.machine_cpu * r.duration for r in results) / duration,
    )


class LoadGenerator:
    """A pool of worker processes driving closed-loop clients."""

    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.processes = processes
        self._barrier = ctx.Barrier(processes + 1)
        self._pipes: list[Connection] = []
        self._workers: list[Any] = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            worker = ctx.Process(target=_worker, args=(child, self._barrier), daemon=True)
            worker.start()
            child.close()
            self._pipes.append(parent)
            self._workers.append(worker)

    def run(self, job: Job, server_pid: int | None = None) -> CellResult:
        """Run `job.clients` clients spread over the workers; block until done.

        With `server_pid`, the server's CPU share over the window is measured too.

        Raises:
            RuntimeError: a worker failed or saw error answers.
        """
        shares = _split(job.clients, self.processes)
        active = [(pipe, n) for pipe, n in zip(self._pipes, shares, strict=True) if n]
        for pipe, n in active:
            pipe.send(Job(job.socket_path, job.method, n, job.warmup, job.duration))
        # Idle workers take part in the barrier from here so it always has every party.
        idle = self.processes - len(active)
        helpers = [threading.Thread(target=self._stand_in) for _ in range(idle)]
        for helper in helpers:
            helper.start()
        server_cpu = machine_cpu = 0.0
        try:
            self._barrier.wait(BARRIER_TIMEOUT)
            time.sleep(job.warmup)
            before = _cpu_seconds(server_pid)
            machine_before = _machine_busy_seconds()
            time.sleep(job.duration)
            server_cpu = (_cpu_seconds(server_pid) - before) / job.duration
            machine_cpu = (_machine_busy_seconds() - machine_before) / job.duration
        except threading.BrokenBarrierError:
            pass  # a worker failed; its result says why
        finally:
            for helper in helpers:
                helper.join(BARRIER_TIMEOUT)
            if self._barrier.broken:
                self._barrier.reset()
        results: list[WorkerResult] = []
        for pipe, _ in active:
            if not pipe.poll(job.warmup + job.duration + JOB_SLACK + BARRIER_TIMEOUT):
                raise RuntimeError("a load generator worker did not answer")
            results.append(pipe.recv())
        failures = [r.failure for r in results if r.failure]
        if failures:
            raise RuntimeError("; ".join(failures))
        latencies = sorted(x for r in results for x in r.latencies)
        return CellResult(
            requests=len(latencies),
            duration=job.duration,
            latencies_ns=latencies,
            errors=sum(r.errors for r in results),
            generator_cpu=sum(r.cpu_seconds for r in results) / job.duration,
            server_cpu=server_cpu,
            machine_cpu=machine_cpu,
        )

    def _stand_in(self) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait(BARRIER_TIMEOUT)

    def close(self) -> None:
        """Stop the workers."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for worker in self._workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    # guest time is already inside user/nice; steal is time the hypervisor
    # gave to someone else, which is load on this machine as far as we care.
    spare = times.idle + getattr(times, "iowait", 0.0)
    double_counted = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return float(sum(times) - spare - double_counted)


def _split(total: int, parts: int) -> Sequence[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def default_processes() -> int:
    """Every core but the server's.

    More workers than that do not add load: on a 2-core machine two workers
    and the server contend for the cores, each wake-up carries fewer
    answers, and the echo server's measured rate halves (see
    docs/performance.md).
    """
    return max(1, (os.cpu_count() or 1) - 1)
