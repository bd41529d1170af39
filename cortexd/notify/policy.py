"""When an action is told what about an alert: the decision, apart from any I/O.

The notifier keeps, per alert and per action, what that action was last
told (`Delivery`). Whenever an alert changes, and again every evaluation
interval, it compares that with what the alert's state says the action should
have been told, and `decide` answers: queue a message now, hold it (and why,
and until when), or nothing. The invariant this keeps: once things are quiet,
the last message each action got about an alert matches the alert's state.

- Firing (acknowledged or not): the action should have a firing message at
  the alert's current severity and labels. A change is held by an active
  silence, and by the cooldown after the last firing message unless the
  severity rose (an escalation is news). A held change goes out when the hold
  ends, if it still stands: the cooldown and silences defer, never drop.
- Resolved: a resolution is owed only where a firing (or flapping) message
  went out; it passes silences and the cooldown, so a receiver never keeps an
  alert open that has ended.
- Flapping: one message says so; then changes are held until it settles, and
  the settled state goes out like any change.
- Repeats: a firing, unacknowledged, unsilenced alert is sent again every
  `repeat_interval` of its action's rule.

The rate limit is applied by the caller, over all actions of one alert.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cortexd.alerts.model import Alert, Severity
from cortexd.notify.model import Action, Delivery, Kind

TOLD_FIRING = ("firing", "flapping")


@dataclass(frozen=True, slots=True)
class View:
    """What `decide` needs of an alert, as it stands now (for one action)."""

    state: str  # firing, acknowledged or resolved
    severity: str
    labels: dict[str, str]  # the label set a message would carry
    flapping: bool
    silenced: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """Queue `send` now; or the wanted message waits for `held` (until `until`, if known).

    With `record_only` the state moves on without a message (a resolution
    to an action that does not want resolutions).
    """

    send: Kind | None = None
    held: str | None = None
    wanted: Kind | None = None
    until: float | None = None
    repeat: bool = False
    # The firing message carries a worse severity than the last one did.
    escalation: bool = False
    record_only: bool = False


NOTHING = Decision()


def _rank(severity: str) -> int:
    try:
        return int(Severity[severity])
    except KeyError:
        return -1


def decide(delivery: Delivery, view: View, action: Action, now: float, cooldown: float) -> Decision:
    """What `action` should be sent about the alert now, given what it was last told."""
    told_firing = delivery.kind in TOLD_FIRING
    if view.flapping:
        if delivery.kind == "flapping":
            # Told it flaps: every change waits until it settles.
            return Decision(held="flapping", wanted="flapping")
        if view.silenced:
            return Decision(held="silenced", wanted="flapping")
        return Decision(send="flapping")
    if view.state == "resolved":
        if not told_firing:
            return NOTHING
        return Decision(send="resolved", record_only=not action.send_resolved)
    if view.silenced:
        if delivery.kind == "firing" and delivery.labels == view.labels:
            return NOTHING
        return Decision(held="silenced", wanted="firing")
    if delivery.kind == "firing" and delivery.labels == view.labels:
        return _repeat(delivery, view, action, now)
    escalation = bool(delivery.severity) and _rank(view.severity) > _rank(delivery.severity)
    if not escalation and delivery.fired_at is not None and now - delivery.fired_at < cooldown:
        return Decision(held="cooldown", wanted="firing", until=delivery.fired_at + cooldown)
    return Decision(send="firing", escalation=escalation)


def _repeat(delivery: Delivery, view: View, action: Action, now: float) -> Decision:
    """The action has the alert's current state: send it again once its repeat is due."""
    if view.state != "firing" or not repeat_due(delivery, action, now):
        return NOTHING
    return Decision(send="firing", repeat=True)


def repeat_due(delivery: Delivery, action: Action, now: float) -> bool:
    """Whether the last firing message to `action` is `repeat_interval` old."""
    return (
        delivery.kind == "firing"
        and bool(action.repeat_interval)
        and delivery.fired_at is not None
        and now >= delivery.fired_at + action.repeat_interval
    )


@dataclasses.dataclass(slots=True)
class Decided:
    """One alert as it stands, and what each of its actions should be told about it."""

    alert: Alert
    snapshot: dict[str, Any]
    labels: dict[str, str]
    decisions: list[tuple[Action, Delivery, Decision]] = dataclasses.field(default_factory=list)

    @property
    def sends(self) -> bool:
        return any(d.send is not None and not d.record_only for _, _, d in self.decisions)

    @property
    def only_repeats(self) -> bool:
        return all(d.repeat for _, _, d in self.decisions if d.send is not None)

    def waiting_since(self, now: float) -> float:
        held = [d.held_since for _, d, _ in self.decisions if d.held_since is not None]
        return min(held, default=now)

    def hold_sends(self, reason: str) -> None:
        self.decisions = [
            (a, d, Decision(held=reason, wanted=x.send))
            if x.send is not None and not x.record_only
            else (a, d, x)
            for a, d, x in self.decisions
        ]


@dataclasses.dataclass(slots=True)
class Plan:
    """What one evaluation decided: messages to queue, state to write, holds to record."""

    messages: list[tuple[str, str, str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    deliveries: list[Delivery] = dataclasses.field(default_factory=list)
    held: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)


def told(
    delivery: Delivery, kind: Kind, alert: Alert, labels: dict[str, str], now: float
) -> Delivery:
    """The delivery state once `kind` about `alert` is queued."""
    firing = kind in TOLD_FIRING
    return Delivery(
        fingerprint=delivery.fingerprint,
        action=delivery.action,
        alert_id=alert.id,
        kind=kind,
        severity=alert.severity.name if firing else delivery.severity,
        labels=labels,
        queued_at=now,
        fired_at=now if firing else delivery.fired_at,
        last_id=delivery.last_id,  # the outbox entry's id replaces it once queued
    )
