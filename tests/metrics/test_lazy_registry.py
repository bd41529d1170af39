"""prometheus_client loads with the first scrape, not at start-up.

The daemon runs under `python -X importtime`, which logs every module as it
is imported: a daemon that serves `status` and `health` but is never
scraped must not have imported prometheus_client (about 5 MB it would hold
for nothing); the first `metrics` call loads it and answers with every
family, the repair collector's included.
"""

from __future__ import annotations

import sys

from tests.daemon import running_daemon

IMPORTTIME = [sys.executable, "-X", "importtime", "-m", "cortexd"]


def imported(log: str) -> set[str]:
    """Module names from `-X importtime` lines: `import time: self | cumulative | name`."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_prometheus_client_is_imported_by_the_first_scrape_only() -> None:
    with running_daemon(command=IMPORTTIME) as d:
        assert d.call("status")["components"]["metrics"]["state"] == "running"
        d.call("health")
        before = imported(d.log())
        assert "cortexd.metrics.methods" in before  # the log is read as meant
        assert "prometheus_client" not in before
        assert "cortexd.healing.metrics" not in before

        text = d.call("metrics")["text"]
        assert "# TYPE cortex_requests_total counter" in text
        assert "# TYPE cortex_repairs_total counter" in text
        assert "process_resident_memory_bytes" in text
        assert {"prometheus_client", "cortexd.healing.metrics"} <= imported(d.log())
