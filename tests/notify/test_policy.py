"""What an action is told about an alert, decided on a stepped clock (no I/O)."""

from __future__ import annotations

import dataclasses

from cortexd.notify.model import Action, Delivery
from cortexd.notify.policy import Decision, View, decide, repeat_due

COOLDOWN = 300.0
HOOK = Action("ops.webhook", "webhook", {"url": "http://h/"}, "ops", repeat_interval=3600)
T0 = 1_700_000_000.0


def view(state: str = "firing", severity: str = "WARNING", **extra: object) -> View:
    labels = {"alertname": "disk", "severity": severity.lower()}
    fields = {"state": state, "severity": severity, "labels": labels}
    fields.update({"flapping": False, "silenced": False, **extra})
    return View(**fields)  # type: ignore[arg-type]


def told(kind: str | None, severity: str = "WARNING", at: float = T0) -> Delivery:
    labels = {"alertname": "disk", "severity": severity.lower()} if kind else {}
    fired = at if kind in ("firing", "flapping") else None
    return Delivery("fp", HOOK.name, "a1", kind, severity if kind else "", labels, at, fired)  # type: ignore[arg-type]


def test_a_new_firing_alert_is_sent_and_then_nothing_until_it_changes() -> None:
    assert decide(told(None), view(), HOOK, T0, COOLDOWN) == Decision(send="firing")
    assert decide(told("firing"), view(), HOOK, T0 + 10, COOLDOWN).send is None


def test_a_refire_within_the_cooldown_waits_for_it_and_then_goes_out() -> None:
    after_resolution = dataclasses.replace(told("resolved"), fired_at=T0)
    held = decide(after_resolution, view(), HOOK, T0 + 60, COOLDOWN)
    assert (held.send, held.held, held.until) == (None, "cooldown", T0 + COOLDOWN)
    assert decide(after_resolution, view(), HOOK, T0 + COOLDOWN, COOLDOWN).send == "firing"
    # Resolved again before the cooldown ended: the action already has that; nothing to say.
    assert decide(after_resolution, view("resolved"), HOOK, T0 + COOLDOWN, COOLDOWN).send is None


def test_an_escalation_passes_the_cooldown_a_de_escalation_waits() -> None:
    up = decide(told("firing"), view(severity="CRITICAL"), HOOK, T0 + 1, COOLDOWN)
    assert (up.send, up.escalation) == ("firing", True)
    down = decide(told("firing", "CRITICAL"), view(), HOOK, T0 + 1, COOLDOWN)
    assert (down.send, down.held) == (None, "cooldown")
    assert decide(told("firing", "CRITICAL"), view(), HOOK, T0 + COOLDOWN, COOLDOWN).send


def test_a_resolution_is_owed_only_where_firing_was_told_and_passes_silences() -> None:
    assert decide(told(None), view("resolved"), HOOK, T0, COOLDOWN).send is None
    silenced = view("resolved", silenced=True)
    assert decide(told("firing"), silenced, HOOK, T0 + 1, COOLDOWN).send == "resolved"
    assert decide(told("flapping"), view("resolved"), HOOK, T0 + 1, COOLDOWN).send == "resolved"
    quiet = dataclasses.replace(HOOK, send_resolved=False)
    decision = decide(told("firing"), view("resolved"), quiet, T0 + 1, COOLDOWN)
    assert (decision.send, decision.record_only) == ("resolved", True)


def test_a_silence_holds_a_change_and_its_end_lets_it_out() -> None:
    held = decide(told(None), view(silenced=True), HOOK, T0, COOLDOWN)
    assert (held.send, held.held) == (None, "silenced")
    # Told already, silenced since: nothing is owed, so nothing waits.
    assert decide(told("firing"), view(silenced=True), HOOK, T0, COOLDOWN) == Decision()
    escalated = view(severity="CRITICAL", silenced=True)
    assert decide(told("firing"), escalated, HOOK, T0, COOLDOWN).held == "silenced"
    assert decide(told(None), view(), HOOK, T0 + 5, COOLDOWN).send == "firing"


def test_flapping_is_told_once_then_changes_wait() -> None:
    assert decide(told("firing"), view(flapping=True), HOOK, T0, COOLDOWN).send == "flapping"
    for state in ("firing", "resolved"):
        waiting = decide(told("flapping"), view(state, flapping=True), HOOK, T0 + 1, COOLDOWN)
        assert (waiting.send, waiting.held) == (None, "flapping")
    # Settled: the state goes out like any change (firing after the cooldown).
    assert decide(told("flapping"), view("resolved"), HOOK, T0 + 2, COOLDOWN).send == "resolved"
    settled = decide(told("flapping"), view(), HOOK, T0 + 2, COOLDOWN)
    assert (settled.held, settled.until) == ("cooldown", T0 + COOLDOWN)


def test_repeats_only_for_firing_unacknowledged_unsilenced_alerts() -> None:
    due = T0 + HOOK.repeat_interval
    assert not repeat_due(told("firing"), HOOK, due - 1)
    repeat = decide(told("firing"), view(), HOOK, due, COOLDOWN)
    assert (repeat.send, repeat.repeat) == ("firing", True)
    assert decide(told("firing"), view("acknowledged"), HOOK, due, COOLDOWN).send is None
    assert decide(told("firing"), view(silenced=True), HOOK, due, COOLDOWN).send is None
    never = dataclasses.replace(HOOK, repeat_interval=0)
    assert decide(told("firing"), view(), never, due * 2, COOLDOWN).send is None


def test_an_acknowledged_alert_still_gets_its_changes() -> None:
    up = decide(told("firing"), view("acknowledged", "CRITICAL"), HOOK, T0 + 1, COOLDOWN)
    assert up.send == "firing"
