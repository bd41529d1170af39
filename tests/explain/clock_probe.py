"""Explain an unsynchronised clock, with only the kernel's answer given; prints the result as JSON.

    python tests/explain/nsinit.py -- python -m tests.explain.clock_probe

The kernel's clock state is one for the whole host, and changing it (or its
NTP flags) would disturb every other program: so adjtimex's answer is the
one input given here — "not synchronised, max error 16 s" — to both the
time_sync check and the clock facts. Everything else is real: the check's
finding, the runbook, and the process table of the fresh PID namespace
nsinit.py makes, where no NTP client runs.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Mapping

import anyio
import orjson

from cortexd.alerts.model import Alert, Severity, fingerprint
from cortexd.config.schema import Config
from cortexd.explain.facts import Host, schema
from cortexd.explain.service import Explainer
from cortexd.host.commands import CommandRunner
from cortexd.knowledge import load_builtin
from cortexd.monitor.check import CheckResult, Status
from cortexd.monitor.checks import system
from cortexd.repair.methods import build_fixes
from cortexd.repair.model import Fix
from cortexd.repair.runner import FixRunner

UNSYNCHRONISED = (system.TIME_ERROR, system.STA_UNSYNC, 16_000_000)


class OneAlert:
    def __init__(self, alert: Alert) -> None:
        self.alert = alert

    async def find(self, given: str, param: str = "id") -> Alert:
        assert given == self.alert.id
        return self.alert

    def is_silenced(self, alert: Alert) -> bool:
        return False


class Results:
    def __init__(self, results: Mapping[str, CheckResult]) -> None:
        self.results = results


class Fixes:
    def __init__(self, fixes: list[Fix]) -> None:
        self.fixes = {f.id: f for f in fixes}


def main() -> None:
    system.kernel_clock_state = lambda: UNSYNCHRONISED  # what TimeSync.collect() asks
    (finding,) = system.TimeSync().collect()
    assert finding.status is Status.WARN, finding
    now = time.time()
    result = CheckResult(
        "time_sync", "Time synchronisation", "system", Status.WARN, finding.message,
        dict(finding.details), None, 1.0, now,
    )  # fmt: skip
    labels = {"check": "time_sync"}
    alert = Alert(
        id=str(uuid.uuid4()), fingerprint=fingerprint("time_sync", labels), source="time_sync",
        severity=Severity.WARNING, category="system", title="Time synchronisation",
        description=finding.message, labels=labels, annotations={}, state="firing",
        first_seen=now, last_seen=now, count=1, host="probe",
    )  # fmt: skip
    explainer = Explainer(
        Config().explain,
        lambda: load_builtin(schema()),
        Host(runner=CommandRunner(), kernel_clock=lambda: UNSYNCHRONISED),
        alerts=OneAlert(alert),
        health=Results({"time_sync": result}),
        fixes=Fixes(build_fixes(Config(), FixRunner())),
    )
    answer, _topic, _alert = anyio.run(explainer.explain, alert.id)
    sys.stdout.write(orjson.dumps(answer).decode() + "\n")


if __name__ == "__main__":
    main()
