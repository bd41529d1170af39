"""A fleet on one machine: many daemons pushing to one real Alertmanager, and one scraped.

Run: `.venv/bin/python bench/fleet.py [--daemons 50] [--duration 120] [--quick] [--json]`.

What it measures (docs/performance.md, "A fleet: scrape and push per host"):

- the cost of one Prometheus scrape of a daemon's `/metrics`: the daemon's CPU
  µs per scrape (its /proc CPU times across `--scrapes` scrapes), the bytes
  of the answer, what gzip would make of them, and the samples it holds;
- the bytes of one Alertmanager push, caught by a local HTTP receiver that
  one daemon also pushes to;
- `--daemons` daemons (no model, a fast keep-alive to Alertmanager), each
  raising `--alerts` alerts, all pushing to one `prometheus-alertmanager`
  started here: Alertmanager's ingestion (alerts received per second, from
  its own `alertmanager_alerts_received_total`), the alerts it holds, its CPU
  and RSS, and the daemons' CPU (µs per second of wall time, each) and RSS.

Every daemon runs on the same two cores as Alertmanager and the bench, so
the CPU figures are per process, in µs per second, not a throughput ceiling.
It reports and does not judge; exit status 1 means the bench itself broke.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml
from report import progress
from servers import Running, short_tmpdir, start_daemon

from cortexctl.client import Client
from tests.notify.helpers import alertmanager, free_port, receiver

SAMPLE_EVERY = 5.0
# Checks that run apt or read the package lists: on a real fleet each host runs
# its own, but here fifty copies of `apt-get -s` at once would measure apt.
PACKAGE_CHECKS = (
    "apt_status",
    "apt_updates",
    "security_updates",
    "cve_scan",
    "dependency_conflicts",
)
HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run does, from the command line."""

    daemons: int
    alerts: int
    duration: float
    resend: float
    scrapes: int
    package_checks: bool
    as_json: bool


def parse_args(argv: list[str] | None) -> Settings:
    """Settings from the command line; exits with status 2 on bad usage."""
    parser = argparse.ArgumentParser(
        description="cortexd fleet benchmark (docs/performance.md).",
        epilog="Example: .venv/bin/python bench/fleet.py --quick --json > fleet.json",
    )
    parser.add_argument("--daemons", type=int, default=50, help="daemons to run (default 50)")
    parser.add_argument("--alerts", type=int, default=3, help="alerts each raises (default 3)")
    parser.add_argument("--duration", type=float, help="measured seconds (default 120, 60 quick)")
    parser.add_argument(
        "--resend",
        type=float,
        default=10.0,
        help="notify.alertmanager_resend_seconds of each daemon (default 10; 60 in production)",
    )
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes to time (default 200)")
    parser.add_argument(
        "--package-checks",
        action="store_true",
        help="keep the apt and CVE checks on (off by default: every daemon shares this host)",
    )
    parser.add_argument("--quick", action="store_true", help="a 60 s window")
    parser.add_argument("--json", action="store_true", help="print figures as JSON on stdout")
    args = parser.parse_args(argv)
    if args.daemons < 1 or args.alerts < 1 or args.scrapes < 1:
        parser.error("--daemons, --alerts and --scrapes take positive counts")
    return Settings(
        daemons=args.daemons,
        alerts=args.alerts,
        duration=args.duration or (60.0 if args.quick else 120.0),
        resend=args.resend,
        scrapes=args.scrapes,
        package_checks=args.package_checks,
        as_json=args.json,
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU of `pid` so far, from /proc (cheaper than psutil per call)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def http_get(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as answer:
        body: bytes = answer.read()
        return body


def rules(path: Path, url: str, extra_url: str | None) -> None:
    """Every alert to Alertmanager (and, for one daemon, to the catcher as well)."""
    actions: list[dict[str, Any]] = [{"type": "alertmanager", "url": url}]
    if extra_url is not None:
        actions.append({"type": "alertmanager", "name": "catch", "url": extra_url})
    path.write_text(
        yaml.safe_dump({"alerts": [{"name": "all", "severity": "info", "actions": actions}]})
    )


def start_fleet(settings: Settings, workdir: str, am_url: str, catch_url: str) -> list[Running]:
    daemons: list[Running] = []
    for index in range(settings.daemons):
        home = os.path.join(workdir, f"d{index}")
        os.mkdir(home)
        rules_path = Path(home) / "alerts.yaml"
        rules(rules_path, am_url, catch_url if index == 0 else None)
        config: dict[str, Any] = {
            "notify": {
                "rules_path": str(rules_path),
                "alertmanager_resend_seconds": settings.resend,
                "instance": f"host-{index:03d}",
            },
            "inference": {"model_path": ""},
        }
        if not settings.package_checks:
            config["checks"] = {name: {"enabled": False} for name in PACKAGE_CHECKS}
        if index == 0:
            config["metrics"] = {"http_enabled": True, "http_port": free_port()}
        daemons.append(start_daemon(home, settings=config))
        if index % 10 == 9:
            progress(f"  {index + 1} daemons ready")
    return daemons


def raise_alerts(daemons: list[Running], count: int) -> None:
    for index, daemon in enumerate(daemons):
        with Client(daemon.socket_path, timeout=10) as client:
            for n in range(count):
                client.call(
                    "alerts.raise",
                    {
                        "title": f"fleet alert {n} on host {index}",
                        "severity": ("WARNING", "ERROR", "CRITICAL")[n % 3],
                        "source": "fleet-bench",
                        "key": f"fleet-{n}",
                        "labels": {"job": f"job-{n}"},
                    },
                )


def received_total(am_url: str) -> float:
    """Alerts Alertmanager received so far (its own counter, every status)."""
    total = 0.0
    for line in http_get(f"{am_url}/metrics").decode().splitlines():
        if line.startswith("alertmanager_alerts_received_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def active_alerts(am_url: str) -> int:
    return len(orjson.loads(http_get(f"{am_url}/api/v2/alerts?active=true")))


def scrape_cost(daemon: Running, port: int, scrapes: int) -> dict[str, Any]:
    """The daemon's CPU per `/metrics` scrape, and what one scrape carries."""
    url = f"http://127.0.0.1:{port}/metrics"
    body = http_get(url)  # the first builds the registry: not timed
    samples = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    families = {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE")}
    asked_gzip = http_get(url, {"Accept-Encoding": "gzip"})
    before = cpu_seconds(daemon.pid)
    for _ in range(scrapes):
        http_get(url, {"Accept-Encoding": "gzip"})
    cpu_gzip = cpu_seconds(daemon.pid) - before
    before = cpu_seconds(daemon.pid)
    started = time.perf_counter()
    for _ in range(scrapes):
        http_get(url)
    wall = time.perf_counter() - started
    cpu = cpu_seconds(daemon.pid) - before
    return {
        "cpu_us_per_scrape": cpu / scrapes * 1e6,
        "cpu_us_per_gzip_scrape": cpu_gzip / scrapes * 1e6,
        "bytes_sent_gzip": len(asked_gzip),
        "wall_ms_per_scrape": wall / scrapes * 1e3,
        "bytes": len(body),
        "bytes_gzip": len(gzip.compress(body)),
        "gzip_honoured": asked_gzip[:2] == b"\x1f\x8b",
        "samples": len(samples),
        "families": len(families),
    }


def measure(settings: Settings) -> dict[str, Any]:
    workdir = short_tmpdir("cxf")
    daemons: list[Running] = []
    load_before = os.getloadavg()
    am_home = Path(workdir) / "am"
    am_home.mkdir()
    try:
        with alertmanager(am_home) as am, receiver() as caught:
            am_url, catch_url = am.url, caught.url("")
            progress(f"starting {settings.daemons} daemons…")
            started = time.perf_counter()
            daemons = start_fleet(settings, workdir, am_url, catch_url)
            start_seconds = time.perf_counter() - started
            progress("raising alerts…")
            raise_alerts(daemons, settings.alerts)
            # One keep-alive round first: every alert has reached Alertmanager.
            time.sleep(settings.resend + 2)
            progress(f"measuring for {settings.duration:.0f} s…")
            pids = [d.pid for d in daemons]
            am_proc = psutil.Process(am.proc.pid)
            received_before = received_total(am_url)
            am_cpu_before = cpu_seconds(am.proc.pid)
            cpu_before = [cpu_seconds(pid) for pid in pids]
            t0 = time.perf_counter()
            active: list[int] = []
            while (elapsed := time.perf_counter() - t0) < settings.duration:
                time.sleep(min(SAMPLE_EVERY, settings.duration - elapsed))
                active.append(active_alerts(am_url))
            wall = time.perf_counter() - t0
            received = received_total(am_url) - received_before
            am_cpu = cpu_seconds(am.proc.pid) - am_cpu_before
            per_daemon = [
                (cpu_seconds(pid) - before) / wall * 1e6
                for pid, before in zip(pids, cpu_before, strict=True)
            ]
            rss = [psutil.Process(pid).memory_info().rss / 2**20 for pid in pids]
            am_rss = am_proc.memory_info().rss / 2**20
            bodies = [post.body for post in list(caught.posts)]
            # The scrape is timed on a quiet machine: the rest of the fleet stops first.
            progress("stopping the fleet but one, timing scrapes…")
            for daemon in daemons[1:]:
                daemon.stop()
            time.sleep(2)
            metrics_port = _metrics_port(daemons[0])
            scrape = scrape_cost(daemons[0], metrics_port, settings.scrapes)
        alerts_per_push = [len(orjson.loads(b)) for b in bodies] or [0]
        return {
            "settings": {
                "daemons": settings.daemons,
                "alerts_each": settings.alerts,
                "duration": settings.duration,
                "resend_seconds": settings.resend,
                "package_checks": settings.package_checks,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg": os.getloadavg(),
            },
            "fleet_start_seconds": start_seconds,
            "alertmanager": {
                "received_per_second": received / wall,
                "active_alerts": statistics.median(active) if active else 0,
                "expected_active": settings.daemons * settings.alerts,
                "cpu_percent": am_cpu / wall * 100,
                "cpu_us_per_alert": am_cpu / received * 1e6 if received else None,
                "rss_mb": am_rss,
            },
            "daemons": {
                "cpu_us_per_second_median": statistics.median(per_daemon),
                "cpu_us_per_second_max": max(per_daemon),
                "cpu_percent_total": sum(per_daemon) / 1e4,
                "rss_mb_median": statistics.median(rss),
            },
            "push": {
                "bodies_caught": len(bodies),
                "bytes_median": statistics.median(len(b) for b in bodies) if bodies else 0,
                "alerts_per_push_median": statistics.median(alerts_per_push),
            },
            "scrape": scrape,
        }
    finally:
        for daemon in daemons:
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _metrics_port(daemon: Running) -> int:
    with Client(daemon.socket_path, timeout=10) as client:
        summary = client.call("status")["components"]["metrics"]
    return int(str(summary["http"]).rsplit(":", 1)[1])


def report(figures: dict[str, Any]) -> str:
    s = figures["settings"]
    am = figures["alertmanager"]
    d = figures["daemons"]
    p = figures["push"]
    sc = figures["scrape"]
    cpu_per_alert = am["cpu_us_per_alert"]
    return "\n".join(
        [
            f"- {s['daemons']} daemons, {s['alerts_each']} alerts each, keep-alive every "
            f"{s['resend_seconds']:g} s, {s['duration']:.0f} s measured; "
            f"package checks {'on' if s['package_checks'] else 'off'}; "
            f"{figures['machine']['cpus']} CPUs, load average "
            f"{figures['machine']['loadavg_before'][0]:.2f} before, "
            f"{figures['machine']['loadavg'][0]:.2f} at the end; the fleet started in "
            f"{figures['fleet_start_seconds']:.1f} s",
            f"- Alertmanager: {am['received_per_second']:.1f} alerts received/s, "
            f"{am['active_alerts']:.0f} active ({am['expected_active']} raised by the bench, "
            "the rest the hosts' own checks), "
            f"CPU {am['cpu_percent']:.1f}% "
            f"({'n/a' if cpu_per_alert is None else f'{cpu_per_alert:.0f}'} µs per alert "
            f"received), RSS {am['rss_mb']:.1f} MB",
            f"- daemons: CPU {d['cpu_us_per_second_median']:.0f} µs per second each (median; "
            f"max {d['cpu_us_per_second_max']:.0f}), {d['cpu_percent_total']:.1f}% of one core "
            f"together; RSS {d['rss_mb_median']:.1f} MB each (median)",
            f"- one push: {p['bytes_median']:.0f} bytes, {p['alerts_per_push_median']:.0f} "
            f"alert(s) per POST ({p['bodies_caught']} caught)",
            f"- one scrape of /metrics: {sc['cpu_us_per_scrape']:.0f} µs of daemon CPU "
            f"({sc['cpu_us_per_gzip_scrape']:.0f} asking for gzip), "
            f"{sc['wall_ms_per_scrape']:.2f} ms wall, {sc['bytes']} bytes plain, "
            f"{sc['bytes_sent_gzip']} sent when asked for gzip "
            f"({'honoured' if sc['gzip_honoured'] else 'not honoured'} by the exporter; "
            f"level 9 would make {sc['bytes_gzip']}), "
            f"{sc['samples']} samples in {sc['families']} families",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        figures = measure(settings)
    except (RuntimeError, OSError, TimeoutError, AssertionError) as exc:
        print(f"fleet bench failed: {exc}", file=sys.stderr)
        return 1
    if settings.as_json:
        sys.stdout.buffer.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
