"""cortex_databases: databases the daemon found damaged at start and moved aside.

The move itself is the store's (`cortexd.store.quarantine`); this check is
how it stays visible. Each `NAME.db.corrupt-<stamp>` file in the state
directory is a FAIL, and so a CRITICAL alert naming the file and where it
came from, until an operator deals with it: restore a backup
(`cortexctl restore`) to get the contents back, then delete the file (or
move it out of the state directory to keep it for inspection). The check
looks at the directory, not at memory, so it reports the same after a
restart.
"""

from __future__ import annotations

import os
import time

from cortexd.alerts.model import Severity
from cortexd.monitor.check import Check, Finding, Status
from cortexd.store import find_quarantined

_STAMP = "%Y-%m-%dT%H:%M:%SZ"


class QuarantinedDatabases(Check):
    id = "cortex_databases"
    name = "Quarantined database"
    category = "system"
    alert_category = "daemon_status"
    description = "damaged databases the daemon moved aside at start (restore a backup)"
    interval = 300.0
    fail_severity = Severity.CRITICAL

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def collect(self) -> list[Finding]:
        found = find_quarantined(self.state_dir)
        if not found:
            return [Finding("no quarantined databases", status=Status.PASS)]
        findings = []
        for database, name in found:
            path = os.path.join(self.state_dir, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # removed since the listing
            when = time.strftime(_STAMP, time.gmtime(st.st_ctime))
            findings.append(
                Finding(
                    f"{database} was damaged and moved aside to {path} at {when}; the daemon "
                    "runs on a fresh one. Restore a backup (cortexctl restore) for its "
                    "contents, then delete the file.",
                    status=Status.FAIL,
                    labels={"file": name},
                    details={
                        "database": os.path.join(self.state_dir, database),
                        "moved_to": path,
                        "size": st.st_size,
                        "moved_at": when,
                    },
                )
            )
        return findings or [Finding("no quarantined databases", status=Status.PASS)]
