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

from dataclasses import dataclass

from cortexd.alerts.model import Severity
from cortexd.notify.model import Action, Delivery, Kind


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
    told_firing = delivery.kind in ("firing", "flapping")
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
