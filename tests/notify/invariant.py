"""Random alert histories against a real daemon, and the delivery invariant they must keep.

A seeded generator drives raise, resolve, escalate, de-escalate, silence,
expire (a silence removed early), acknowledge, restart and `kill -9` over a
set of alerts, through the real socket, while a local HTTP receiver records
every webhook message. Once things are quiet (no change for longer than the
cooldown and the flap window, nothing pending or held), the last message the
receiver got about each alert must match the alert's state in the daemon:

- firing or acknowledged: a firing message at the alert's severity, not a
  flapping one;
- resolved: a resolution, or no message at all (nothing was ever told).

Used by tests/notify/test_invariant.py (a bounded run) and bench/notify.py
(`--invariant-steps`, a longer one).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cortexctl.client import Client, DaemonUnreachable
from cortexd.protocol import CortexError, NotFound
from tests.daemon import DaemonProcess, running_daemon
from tests.notify.helpers import Post, Receiver

SEVERITIES = ("INFO", "WARNING", "ERROR", "CRITICAL")
# Small windows so that "quiet" comes within seconds.
COOLDOWN = 0.4
FLAP_WINDOW = 1.2
EVALUATION = 0.1
QUIET = max(COOLDOWN, FLAP_WINDOW) + 0.5
# A kill step: this many clients each sending this many changes, killed mid-way.
KILL_CLIENTS = 3
KILL_CHANGES = 8
# Relative weights of the steps.
WEIGHTS = {
    "raise": 30,
    "resolve": 18,
    "escalate": 10,
    "deescalate": 10,
    "silence": 5,
    "expire": 4,
    "ack": 10,
    "pause": 8,
    "restart": 0.6,
    "kill": 0.8,
}


@dataclass
class Alert:
    """What the generator believes of one alert (the daemon's answers correct it)."""

    key: str
    severity: int = 1
    id: str | None = None


@dataclass
class Run:
    """Counts of what a run did, for its report."""

    steps: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    alerts: set[str] = field(default_factory=set)
    restarts: int = 0
    kills: int = 0
    posts: int = 0
    seconds: float = 0.0
    # Why messages were held back along the way (from the daemon's history).
    held: dict[str, int] = field(default_factory=dict)


def daemon_config(state_dir: Path, rules_path: Path, rate_per_minute: int) -> dict[str, Any]:
    from cortexd.config.schema import ChecksConfig

    return {
        "checks": {f: {"enabled": False} for f in ChecksConfig.__dataclass_fields__},
        "state_dir": str(state_dir),
        "logging": {"level": "INFO"},
        "alerts": {
            "flap_window_seconds": FLAP_WINDOW,
            "flap_high_changes": 5,
            "flap_low_changes": 2,
        },
        "notify": {
            "rules_path": str(rules_path),
            "cooldown_seconds": COOLDOWN,
            "rate_limit_per_minute": rate_per_minute,
            "evaluation_interval_seconds": EVALUATION,
            "backoff_seconds": 0.05,
            "backoff_max_seconds": 0.2,
            "attempt_timeout_seconds": 5.0,
            "max_attempts": 100,
        },
    }


def write_rules(path: Path, url: str, repeat: str) -> None:
    rule = {
        "name": "prop",
        "repeat_interval": repeat,
        "actions": [{"type": "webhook", "url": url}],
    }
    path.write_text(yaml.safe_dump({"alerts": [rule]}))


class Driver:
    """Drives one daemon (restarted and killed along the way) with random steps."""

    def __init__(self, workdir: Path, receiver: Receiver, seed: int, alerts: int) -> None:
        self.rand = random.Random(seed)
        self.seed = seed
        self.receiver = receiver
        self.state_dir = workdir / "state"
        self.rules = workdir / "alerts.yaml"
        self.alerts = [Alert(f"k{n}") for n in range(alerts)]
        self.silences: list[str] = []
        self.run = Run()
        self.rate = 60
        self.repeat = "5s"

    @contextmanager
    def daemon(self) -> Iterator[DaemonProcess]:
        write_rules(self.rules, self.receiver.url("/hook"), self.repeat)
        config = daemon_config(self.state_dir, self.rules, self.rate)
        with running_daemon(config) as d:
            yield d

    def drive(self, steps: int) -> None:
        """Take `steps` random steps, the last a `kill -9`; returns with the daemon stopped."""
        started = time.monotonic()
        kinds = list(WEIGHTS)
        weights = [WEIGHTS[k] for k in kinds]
        done = 0
        while done < steps:
            with self.daemon() as d, d.client(timeout=30) as client:
                while done < steps:
                    kind = self.rand.choices(kinds, weights)[0]
                    if done == steps - 1:
                        # Changes left in flight by a crash are the last word on their alerts.
                        kind = "kill"
                    if kind in ("restart", "kill"):
                        self._count(kind)
                        done += 1
                        if kind == "kill":
                            self._kill(d)
                        else:
                            self.run.restarts += 1
                        break
                    if kind == "pause":
                        time.sleep(self.rand.uniform(0.0, 0.3))
                        continue
                    self._step(client, kind)
                    self._count(kind)
                    done += 1
        self.run.seconds = time.monotonic() - started

    def _count(self, kind: str) -> None:
        self.run.steps += 1
        self.run.by_kind[kind] = self.run.by_kind.get(kind, 0) + 1

    def _params(self, alert: Alert) -> dict[str, Any]:
        return {
            "key": alert.key,
            "name": f"prop_{alert.key}",
            "title": f"property alert {alert.key}",
            "severity": SEVERITIES[alert.severity],
            "labels": {"prop": alert.key},
        }

    def _step(self, client: Client, kind: str) -> None:
        alert = self.rand.choice(self.alerts)
        try:
            if kind in ("raise", "escalate", "deescalate"):
                if kind == "escalate":
                    alert.severity = min(3, alert.severity + 1)
                elif kind == "deescalate":
                    alert.severity = max(0, alert.severity - 1)
                else:
                    alert.severity = self.rand.randrange(4)
                answer = client.call("alerts.raise", self._params(alert))["alert"]
                alert.id = answer["id"]
                self.run.alerts.add(alert.key)
            elif kind == "resolve":
                client.call("alerts.resolve", {"key": alert.key})
            elif kind == "ack" and alert.id is not None:
                client.call("alerts.ack", {"id": alert.id})
            elif kind == "silence":
                matcher = f'alertname="prop_{alert.key}"'
                seconds = self.rand.uniform(0.2, 3.0)
                params = {"matchers": [matcher], "duration_seconds": seconds}
                self.silences.append(client.call("alerts.silence", params)["silence"]["id"])
            elif kind == "expire" and self.silences:
                silence = self.silences.pop(self.rand.randrange(len(self.silences)))
                client.call("silences.delete", {"id": silence})
        except NotFound:
            pass  # resolving what is not open, or a silence that just ended

    def _kill(self, d: DaemonProcess) -> None:
        """A burst of changes from a few clients, and `kill -9` at a random moment in it.

        Some changes are answered, some committed but not answered, some never
        made: the daemon's own state after the restart is what counts.
        """
        self.run.kills += 1
        bursts = []
        for _ in range(KILL_CLIENTS):
            chosen = [self.rand.choice(self.alerts) for _ in range(KILL_CHANGES)]
            calls = []
            for alert in chosen:
                if self.rand.random() < 0.6:
                    alert.severity = self.rand.randrange(4)
                    calls.append(("alerts.raise", self._params(alert)))
                else:
                    calls.append(("alerts.resolve", {"key": alert.key}))
            bursts.append(calls)

        def send(calls: list[tuple[str, dict[str, Any]]]) -> None:
            try:
                with d.client(timeout=5) as client:
                    for method, params in calls:
                        try:
                            client.call(method, params)
                        except NotFound:
                            continue
            except (CortexError, DaemonUnreachable, OSError, TimeoutError):
                pass  # killed under us: whether it landed is the daemon's to say

        workers = [threading.Thread(target=send, args=(calls,)) for calls in bursts]
        for worker in workers:
            worker.start()
        time.sleep(self.rand.uniform(0.0, 0.05))
        os.killpg(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
        for worker in workers:
            worker.join(10)

    # -- the check -------------------------------------------------------

    def settle_and_check(self, timeout: float = 90.0) -> list[str]:
        """Start the daemon once more, wait until quiet, return every broken invariant."""
        with self.daemon() as d:
            for silence in d.call("silences.list")["silences"]:
                d.call("silences.delete", {"id": silence["id"]})
            time.sleep(QUIET)
            deadline = time.monotonic() + timeout
            while True:
                problems = self.check(d)
                if not problems or time.monotonic() > deadline:
                    self.run.posts = len(self.receiver.posts)
                    params = {"since": 0, "limit": 10000}
                    for record in d.call("notify.history", params)["suppressed"]:
                        reason = record["reason"]
                        self.run.held[reason] = self.run.held.get(reason, 0) + 1
                    return problems
                time.sleep(0.2)

    def check(self, d: DaemonProcess) -> list[str]:
        status = d.call("status")["components"]["notify"]
        listed = d.call("alerts.list", {"state": "all", "include_cleared": True, "limit": 10000})
        latest: dict[str, dict[str, Any]] = {}
        for alert in listed["alerts"]:
            held = latest.get(alert["fingerprint"])
            if held is None or alert["first_seen"] > held["first_seen"]:
                latest[alert["fingerprint"]] = alert
        last = self.last_posts()
        problems = []
        if status["pending"] or status["held"]:
            problems.append(f"not quiet: {status['pending']} pending, held {status['held']}")
        for fp, alert in latest.items():
            problems.extend(_mismatch(alert, last.get(fp)))
        return problems

    def last_posts(self) -> dict[str, Post]:
        last: dict[str, Post] = {}
        with self.receiver._lock:
            posts = list(self.receiver.posts)
        for post in posts:
            body = post.json()
            last[body["alerts"][0]["fingerprint"]] = post
        return last


def _mismatch(alert: dict[str, Any], post: Post | None) -> list[str]:
    where = f"alert {alert['key']} ({alert['state']}, {alert['severity']})"
    if alert["flapping"]:
        return [f"{where} still flapping once quiet"]
    if post is None:
        if alert["state"] == "resolved":
            return []
        return [f"{where}: no message at all"]
    body = post.json()
    told = body["alerts"][0]
    status = body["status"]
    if alert["state"] == "resolved":
        return [] if status == "resolved" else [f"{where}: last message says {status}"]
    if status != "firing":
        return [f"{where}: last message says {status}"]
    if told["annotations"].get("flapping") == "true":
        return [f"{where}: last message says flapping"]
    if told["labels"]["severity"] != alert["severity"].lower():
        return [f"{where}: last message has severity {told['labels']['severity']}"]
    return []
