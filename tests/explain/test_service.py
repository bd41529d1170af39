"""The Explainer's own limits: too many at once is BUSY, a broken runbook is UNAVAILABLE."""

from __future__ import annotations

import time
import uuid

import pytest

from cortexd.alerts.model import Alert, Severity, fingerprint
from cortexd.config.schema import Config
from cortexd.explain.facts import Host, schema
from cortexd.explain.methods import LazyExplainer
from cortexd.explain.service import MAX_IN_PROGRESS, ExplainBusy, Explainer, RunbookBroken
from cortexd.host.commands import run_command
from cortexd.knowledge import KnowledgeBase, KnowledgeError, load_builtin
from cortexd.protocol import ErrorCode
from cortexd.repair.methods import build_fixes
from cortexd.repair.runner import FixRunner
from tests.explain.clock_probe import Fixes, OneAlert, Results


def _alert() -> Alert:
    now = time.time()
    labels = {"job": "nightly"}
    return Alert(
        id=str(uuid.uuid4()), fingerprint=fingerprint("backup", labels), source="backup",
        severity=Severity.ERROR, category="service", title="Backup failed", description="",
        labels=labels, annotations={}, state="firing", first_seen=now, last_seen=now, count=1,
        host="test",
    )  # fmt: skip


def _explainer(alert: Alert, knowledge: object) -> Explainer:
    return Explainer(
        Config().explain,
        knowledge,  # type: ignore[arg-type]
        Host(runner=run_command, kernel_clock=lambda: (0, 0, 0)),
        alerts=OneAlert(alert),
        health=Results({}),
        fixes=Fixes(build_fixes(Config(), FixRunner())),
    )


async def test_one_more_than_the_limit_is_busy_at_once() -> None:
    alert = _alert()
    explainer = _explainer(alert, lambda: load_builtin(schema()))
    result, _topic, _alert_again = await explainer.explain(alert.id)
    assert result["entry"] == "external"
    explainer.in_progress = MAX_IN_PROGRESS
    with pytest.raises(ExplainBusy) as caught:
        await explainer.explain(alert.id)
    assert caught.value.code is ErrorCode.BUSY
    assert explainer.state()["rejected_busy"] == 1
    assert explainer.state()["explained"] == 1


async def test_a_runbook_that_does_not_load_is_unavailable_not_a_crash() -> None:
    def broken() -> KnowledgeBase:
        raise KnowledgeError(["disk.yaml: entries[0] (disk_space): commands: at least one"])

    alert = _alert()
    explainer = _explainer(alert, broken)
    with pytest.raises(RunbookBroken) as caught:
        await explainer.explain(alert.id)
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert "disk.yaml: entries[0]" in caught.value.message
    no_catch_all = _explainer(_alert(), lambda: KnowledgeBase([]))
    with pytest.raises(RunbookBroken):
        await no_catch_all.ask("anything")


async def test_the_feature_is_built_on_the_first_explanation_and_shows_the_same_state() -> None:
    """Until its first explanation the feature shows what an Explainer that did
    nothing yet shows; the first `get` builds it once, and later ones reuse it."""
    alert = _alert()
    built: list[Explainer] = []

    def build() -> Explainer:
        built.append(_explainer(alert, lambda: load_builtin(schema())))
        return built[-1]

    lazy = LazyExplainer(build)
    assert lazy.state() == _explainer(alert, lambda: load_builtin(schema())).state()
    assert built == []
    first = await lazy.get()
    result, _topic, _alert_again = await first.explain(alert.id)
    assert result["entry"] == "external"
    assert await lazy.get() is first and built == [first]
    assert lazy.state()["explained"] == 1
    assert lazy.state()["runbook_entries"] == len(await first.knowledge())
