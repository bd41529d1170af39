"""Explanations of real conditions: the right cause, its evidence and its fix, every time.

Each scenario (tests/explain/scenarios.py) makes its condition inside private
namespaces, runs the check that sees it and explains the alert over the
socket by the 8-character prefix `alerts list` shows. The deterministic part
is asserted exactly: the entry, the causes the facts point to and their
order, the top cause's evidence, the fixes it offers, and the text lines
that say so. No model is loaded here; the model's part is tested in
test_explain_daemon.py, through its structure only.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.explain.scenarios import CLOCK, SCENARIOS, Scenario, clock_answer, judge, world

pytestmark = pytest.mark.root


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("root-only: the scenarios mount, lock and chown inside private namespaces")


def _lines_of_top_cause(result: dict[str, Any]) -> list[str]:
    """What the text must say about the top cause, built from the structured answer."""
    top = result["causes"][0]
    pointed = [c for c in result["causes"] if c["pointed_to"]]
    lines = ["Likely causes, most likely first:" if len(pointed) > 1 else "Likely cause:"]
    lines.append(f"  1. {top['text']}")
    lines += [f"     seen: {e['text']}  [{e['source']}]" for e in top["evidence"]]
    if top["advice"]:
        lines.append(f"     what to do: {top['advice']}")
    fixes = {f["fix_id"]: f for f in result["fixes"]}
    lines += [f"     fix: {fixes[f]['command']}  ({f}, {fixes[f]['safety']})" for f in top["fixes"]]
    return lines


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_the_explanation_names_the_cause_its_evidence_and_fix(scenario: Scenario) -> None:
    _root()
    with world(scenario) as w:
        values = scenario.setup(w)
        subject = {k: values[k] for k in scenario.subject}
        result = w.explain(scenario.check, subject, model=False)
    assert judge(scenario, values, result) == [], result["text"]
    # The text says the same, in the same order, right under the condition's meaning.
    text = result["text"].splitlines()
    start = text.index(_lines_of_top_cause(result)[0])
    assert text[start : start + len(_lines_of_top_cause(result))] == _lines_of_top_cause(result)
    assert text[2] == result["meaning"]
    assert result["alert"]["source"] == scenario.check
    # Without a model the deterministic part is the whole answer, and not an error.
    assert result["summary"] is None
    assert result["summary_skipped"] == "not asked for (model: false)"
    assert result["timings"]["answer_ms"] < 1000


def test_an_unsynchronised_clock_with_no_ntp_client() -> None:
    _root()
    result = clock_answer()
    assert judge(CLOCK, {}, result) == [], result["text"]
    kernel = next(f for f in result["facts"] if f["kind"] == "clock.kernel")
    assert kernel["fields"] == {"synchronised": False, "maxerror_ms": 16000.0}
    assert result["commands"][0] == "timedatectl status"
    assert result["fixes"] == []
