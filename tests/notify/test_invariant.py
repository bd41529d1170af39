"""The delivery invariant under random histories, with restarts and `kill -9`.

See tests/notify/invariant.py for the generator and the check. The seed is
fixed so a failure can be replayed (`CORTEX_INVARIANT_SEED=<n>` picks
another); bench/notify.py runs a longer history.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.notify.helpers import receiver
from tests.notify.invariant import Driver

SEED = int(os.environ.get("CORTEX_INVARIANT_SEED", "11"))
STEPS = 2000
ALERTS = 60
JITTER = 0.03


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_last_message_matches_the_alert_state_once_quiet(tmp_path: Path) -> None:
    with receiver(jitter=JITTER) as recv:
        driver = Driver(tmp_path, recv, SEED, ALERTS)
        driver.drive(STEPS)
        problems = driver.settle_and_check()
        run = driver.run
        report = (
            f"seed {SEED}: {run.steps} steps over {len(run.alerts)} alerts "
            f"({run.restarts} restarts, {run.kills} kills), {run.posts} messages; "
            f"steps {run.by_kind}; held back {run.held}"
        )
        assert not problems, report + "\n" + "\n".join(problems[:30])
        assert run.steps >= STEPS and len(run.alerts) >= 50, report
        assert run.kills >= 3 and run.restarts >= 3, report
        # Every kind of step was taken, so the invariant held through each of them.
        assert set(run.by_kind) >= {
            "raise",
            "resolve",
            "escalate",
            "deescalate",
            "silence",
            "expire",
            "ack",
            "restart",
            "kill",
        }, report
        # ... and through every reason a message waits.
        assert set(run.held) >= {"silenced", "cooldown", "rate_limit", "flapping"}, report
