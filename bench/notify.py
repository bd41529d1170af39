"""Notification and metrics benchmarks: outbox throughput and metrics scrape cost.

Measures, on this machine:

1. Outbox throughput: alerts raised through the real alert manager, each
   notification committed to the outbox and delivered by the real notifier
   to a local HTTP receiver (stdlib `ThreadingHTTPServer` on 127.0.0.1):
   entries committed per second and entries delivered per second; then a
   backlog of entries queued at once, drained (delivery alone).
2. Scrape cost: rendering the daemon's registry holding 10,000 series (all of
   it, and the part that runs on the event loop), next to
   `prometheus_client.generate_latest` on an empty registry in the same run.

3. With `--invariant-steps N`: a longer run of the delivery-invariant test
   (tests/notify/invariant.py): N random raise, resolve, escalate,
   de-escalate, silence, expire, ack, restart and kill -9 steps against a
   real daemon and a webhook receiver, then the check that once quiet every
   alert's last message matches its state.

Run: `python bench/notify.py [--json] [--entries N] [--invariant-steps N --seed S]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Severity
from cortexd.alerts.store import MIGRATIONS as ALERT_MIGRATIONS
from cortexd.config.schema import AlertsConfig, Config, NotifyConfig
from cortexd.metrics.collector import Metrics, Sources
from cortexd.notify.notifier import Notifier
from cortexd.notify.store import MIGRATIONS
from cortexd.server import ServerStats
from cortexd.store import Database

SERIES = 10_000
SCRAPES = 30


class _Sink(http.server.BaseHTTPRequestHandler):
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with _Sink.lock:
            _Sink.count += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def _delivered(notifier: Notifier, count: int) -> None:
    # Polled: the notifier's counters have no event to wait on.
    while True:
        if notifier.sent["bench.webhook"] >= count:
            return
        await anyio.sleep(0.01)


async def outbox_throughput(entries: int, workdir: Path) -> dict[str, float]:
    """Raise `entries` alerts; time their commits and their deliveries."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    rules = workdir / "alerts.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "alerts": [
                    {
                        "name": "bench",
                        "actions": [{"type": "webhook", "url": f"http://127.0.0.1:{port}/"}],
                    }
                ]
            }
        )
    )
    notify = NotifyConfig(rules_path=str(rules), rate_limit_per_minute=100_000, cooldown_seconds=0)
    config = dataclasses.replace(Config(), notify=notify)
    alerts = AlertManager(
        Database(str(workdir / "alerts.db"), ALERT_MIGRATIONS),
        AlertsConfig(max_active=entries + 10),
    )
    notifier = Notifier(Database(str(workdir / "notify.db"), MIGRATIONS), config, alerts)
    _Sink.count = 0
    try:
        async with anyio.create_task_group() as tg:
            await alerts.start(tg)
            await notifier.start(tg)
            started = time.perf_counter()
            for n in range(entries):
                await alerts.notice(
                    source="bench",
                    labels={"n": str(n)},
                    severity=Severity.ERROR,
                    category="system",
                    title=f"bench {n}",
                )
            committed = time.perf_counter() - started
            await _delivered(notifier, entries)
            delivered = time.perf_counter() - started
            event = notifier.test_event()
            before = notifier.sent["bench.webhook"]
            drain_start = time.perf_counter()
            backlog = [("bench.webhook", "firing", f"fp{n}", event) for n in range(entries)]
            ids = await notifier.store.commit(backlog, [], [], max_attempts=5, now=time.time())
            notifier.dispatcher.queued(len(ids))
            await _delivered(notifier, before + entries)
            drained = time.perf_counter() - drain_start
            await notifier.stop()
            await alerts.stop()
            tg.cancel_scope.cancel()
    finally:
        server.shutdown()
        server.server_close()
    assert _Sink.count == 2 * entries, (_Sink.count, entries)
    return {
        "entries": entries,
        "committed_per_s": entries / committed,
        "delivered_per_s": entries / delivered,
        "backlog_drained_per_s": entries / drained,
    }


def scrape_cost() -> dict[str, float]:
    """Median render time of 10,000 series vs generate_latest on an empty registry."""
    metrics = Metrics(Sources(stats=ServerStats()))
    per_check = 4
    for n in range(SERIES // per_check):
        for status in ("pass", "warn", "fail", "error"):
            metrics.events.check_runs[(f"check_{n}", status)] = n
    text = metrics.render()
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    empty = CollectorRegistry()

    def median_ms(fn: Any) -> float:
        times = []
        for _ in range(SCRAPES):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    return {
        "series": series,
        "bytes": len(text),
        "render_ms": median_ms(metrics.render),
        "on_loop_ms": median_ms(lambda: list(metrics.registry.collect())),
        "empty_generate_latest_ms": median_ms(lambda: generate_latest(empty)),
    }


def invariant(steps: int, seed: int) -> None:
    """The delivery-invariant run of the tests, longer; exits 1 if the invariant breaks."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.notify.helpers import receiver
    from tests.notify.invariant import Driver

    with receiver(jitter=0.03) as recv, tempfile.TemporaryDirectory(prefix="cxinv") as tmp:
        driver = Driver(Path(tmp), recv, seed, alerts=100)
        driver.drive(steps)
        started = time.monotonic()
        problems = driver.settle_and_check()
        run = driver.run
        print(
            f"invariant, seed {seed}: {run.steps} steps over {len(run.alerts)} alerts, "
            f"{run.restarts} restarts, {run.kills} kills, {run.posts} messages; "
            f"driven {run.seconds:.0f}s, quiet and checked in {time.monotonic() - started:.1f}s"
        )
        print(f"  steps {run.by_kind}")
        print(f"  held back {run.held}")
        print("  invariant holds" if not problems else "  BROKEN:\n  " + "\n  ".join(problems))
    if problems:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--invariant-steps", type=int, default=0, metavar="N")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.invariant_steps:
        invariant(args.invariant_steps, args.seed)
        return
    with tempfile.TemporaryDirectory(prefix="cxbench") as tmp:
        outbox = anyio.run(outbox_throughput, args.entries, Path(tmp))
    scrape = scrape_cost()
    result = {"outbox": outbox, "scrape": scrape}
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    print(f"outbox: {outbox['entries']} alerts → webhook on 127.0.0.1")
    print(f"  committed {outbox['committed_per_s']:.0f}/s", end="")
    print(f", delivered {outbox['delivered_per_s']:.0f}/s", end="")
    print(f", backlog drained {outbox['backlog_drained_per_s']:.0f}/s")
    print(f"scrape: {scrape['series']} series, {scrape['bytes'] / 1024:.0f} KiB")
    print(
        f"  render {scrape['render_ms']:.1f} ms (on the loop {scrape['on_loop_ms']:.1f} ms)", end=""
    )
    empty_us = scrape["empty_generate_latest_ms"] * 1000
    print(f"; generate_latest on an empty registry {empty_us:.1f} µs")


if __name__ == "__main__":
    main()
