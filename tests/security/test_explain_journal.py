"""Journal lines in an explanation follow the journal's rule, for real accounts.

`inference.explain` is open to every reader of the socket, but a unit's journal
lines among its facts are shown only to those who may read the journal (a
member of `adm` or `systemd-journal`, an admin, root): a reader gets a note.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.daemon import merge, running_daemon
from tests.security.accounts import Accounts, Runner

pytestmark = pytest.mark.root

WITHHELD = "the unit's journal lines are shown to admins and to adm and systemd-journal"


def test_a_reader_is_told_the_journal_lines_are_withheld(accts: Accounts, runner: Runner) -> None:
    config = merge(accts.daemon_config(), {"logs": {"watch": False}})
    with running_daemon(config) as daemon:
        alert = daemon.call(
            "alerts.raise",
            {
                "title": "segmentation fault: worker.service",
                "source": "journal",
                "labels": {"unit": "worker.service", "pattern": "segfault"},
            },
        )["alert"]
        request = [("inference.explain", {"alert_id": alert["id"][:8], "model": False})]
        answers: dict[str, Any] = {
            role: runner.calls(accts[role], daemon.socket_path, request)[0]
            for role in ("reader", "journal", "admin")
        }
    for role, answer in answers.items():
        assert answer["result"]["entry"] == "journal_segfault", (role, answer)
    assert WITHHELD in answers["reader"]["result"]["notes"]
    assert WITHHELD not in answers["journal"]["result"]["notes"]
    assert WITHHELD not in answers["admin"]["result"]["notes"]
