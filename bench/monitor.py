"""Monitor and alert benchmarks: check cycle cost, event-loop lag, alert queries and updates.

Measures, on this machine:

1. CPU time of one cycle of the fast checks (metrics and disk_space), run
   directly in this process.
2. Event-loop lag while every check runs at once through the real scheduler:
   a ticker asks to sleep 1 ms over and over; lag is how late it wakes.
3. `alerts.list` over 10,000 stored alerts through the real daemon's socket,
   next to the same query straight on sqlite3.
4. Alert-update throughput through the alert manager (new alerts: one
   committed transaction each; repeats of a persisting condition: coalesced),
   next to one-row transactions straight on sqlite3.

Run: `python bench/monitor.py [--json]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import yaml

from cortexctl.client import Client
from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Severity
from cortexd.alerts.store import MIGRATIONS
from cortexd.config.schema import AlertsConfig, ChecksConfig, Config
from cortexd.monitor.registry import build_checks
from cortexd.monitor.scheduler import Monitor
from cortexd.store import Database

FAST = (
    "cpu_usage",
    "cpu_load",
    "memory",
    "swap_usage",
    "disk_space",
    "file_descriptors",
    "zombie_processes",
    "process_count",
)
STORED_ALERTS = 10_000
LIST_CALLS = 200
TICK = 0.001


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
    }


def fast_cycle(cycles: int = 20) -> dict[str, Any]:
    checks = [c for c in build_checks(Config()) if c.id in FAST]
    for check in checks:  # the first cpu_usage sample waits for a baseline
        check.collect()
    cpu, wall = [], []
    for _ in range(cycles):
        c0, w0 = time.process_time(), time.perf_counter()
        for check in checks:
            check.collect()
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    return {
        "checks": len(checks),
        "cpu_ms_median": round(statistics.median(cpu), 2),
        "wall_ms_median": round(statistics.median(wall), 2),
    }


async def loop_lag(state_dir: str) -> dict[str, Any]:
    config = dataclasses.replace(
        Config(),
        checks=dataclasses.replace(
            ChecksConfig(),
            dns_resolution=dataclasses.replace(
                ChecksConfig().dns_resolution, targets=("localhost",)
            ),
            network_connectivity=dataclasses.replace(
                ChecksConfig().network_connectivity, targets=()
            ),
        ),
    )
    alerts = AlertManager(Database(os.path.join(state_dir, "lag.db"), MIGRATIONS), AlertsConfig())
    await alerts.open()
    monitor = Monitor(config, build_checks, alerts)
    lags: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await anyio.sleep(TICK)
            lags.append((time.perf_counter() - started - TICK) * 1000)

    # The same ticker with nothing else running: what the machine itself adds.
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(3)
        done.set()
    idle, lags, done = lags, [], anyio.Event()
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        results = await monitor.run_many(monitor.checks.values())
        done.set()
    elapsed = time.perf_counter() - started
    await monitor.stop()
    await alerts.stop()
    return {
        "checks": len(results),
        "seconds": round(elapsed, 2),
        "samples": len(lags),
        "lag_ms_p50": round(pct(lags, 0.50), 3),
        "lag_ms_p99": round(pct(lags, 0.99), 3),
        "lag_ms_max": round(max(lags), 3),
        "idle_lag_ms_p50": round(pct(idle, 0.50), 3),
        "idle_lag_ms_p99": round(pct(idle, 0.99), 3),
        "statuses": {r.check_id: r.status.value for r in results},
    }


async def fill_alerts(path: str) -> dict[str, Any]:
    config = AlertsConfig(max_active=STORED_ALERTS * 2)
    manager = AlertManager(Database(path, MIGRATIONS), config)
    await manager.open()
    started = time.perf_counter()
    for i in range(STORED_ALERTS):
        await manager.notice(
            source="bench",
            labels={"i": str(i)},
            severity=Severity(i % 4),
            category="system",
            title=f"bench alert {i}",
            annotations={"value": i},
        )
    created = time.perf_counter() - started
    repeats = 20_000
    started = time.perf_counter()
    for i in range(repeats):
        await manager.notice(
            source="bench",
            labels={"i": str(i % 100)},
            severity=Severity((i % 100) % 4),
            category="system",
            title=f"bench alert {i % 100}",
            annotations={"value": i},
        )
    updated = time.perf_counter() - started
    await manager.stop()
    return {
        "new_alerts_per_second": round(STORED_ALERTS / created),
        "coalesced_updates_per_second": round(repeats / updated),
    }


def raw_sqlite_inserts(path: str, count: int = 5000) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
    started = time.perf_counter()
    for i in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (str(i), "x" * 200))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def raw_list(path: str, limit: int) -> list[float]:
    conn = sqlite3.connect(path)
    times = []
    for _ in range(LIST_CALLS):
        started = time.perf_counter()
        conn.execute(
            "SELECT * FROM alerts WHERE state IN ('firing', 'acknowledged') AND cleared_at IS NULL"
            " ORDER BY last_seen DESC LIMIT ?",
            (limit,),
        ).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return times


def socket_list(workdir: str, state_dir: str) -> dict[str, Any]:
    sock = os.path.join(workdir, "c.sock")
    checks = {f.name: {"enabled": False} for f in dataclasses.fields(ChecksConfig)}
    conf = {
        "state_dir": state_dir,
        "server": {"socket_path": sock},
        "logging": {"level": "WARN", "target": "stderr"},
        "checks": checks,
    }
    conf_path = os.path.join(workdir, "daemon.conf")
    Path(conf_path).write_text(yaml.safe_dump(conf))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortexd", "--config", conf_path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not start")
            time.sleep(0.05)
        out: dict[str, Any] = {}
        with Client(sock, timeout=30) as client:
            client.call("alerts.list")  # warm-up (also waits for the alerts store)
            pings = []
            for _ in range(LIST_CALLS):
                started = time.perf_counter()
                client.call("ping")
                pings.append((time.perf_counter() - started) * 1000)
            out["socket_ping_ms_p50"] = round(pct(pings, 0.5), 2)
            for limit in (100, 1000):
                times = []
                for _ in range(LIST_CALLS if limit == 100 else 20):
                    started = time.perf_counter()
                    found = client.call("alerts.list", {"limit": limit})
                    times.append((time.perf_counter() - started) * 1000)
                assert found["count"] == limit
                out[f"socket_limit_{limit}_ms_p50"] = round(pct(times, 0.5), 2)
                out[f"socket_limit_{limit}_ms_p99"] = round(pct(times, 0.99), 2)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="cxbench", dir="/tmp")
    try:
        figures: dict[str, Any] = {"machine": machine(), "fast_cycle": fast_cycle()}
        figures["loop_lag_all_checks"] = anyio.run(loop_lag, workdir)
        state = os.path.join(workdir, "state")
        os.makedirs(state)
        figures["alert_updates"] = anyio.run(fill_alerts, os.path.join(state, "alerts.db"))
        figures["alert_updates"]["raw_sqlite_one_row_transactions_per_second"] = round(
            raw_sqlite_inserts(os.path.join(workdir, "raw.db"))
        )
        listing = socket_list(workdir, state)
        raw = raw_list(os.path.join(state, "alerts.db"), 100)
        listing["raw_sqlite_limit_100_ms_p50"] = round(pct(raw, 0.5), 3)
        listing["raw_sqlite_limit_100_ms_p99"] = round(pct(raw, 0.99), 3)
        listing["stored_alerts"] = STORED_ALERTS
        figures["alerts_list"] = listing
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        for section, values in figures.items():
            print(section)
            for key, value in values.items():
                print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
