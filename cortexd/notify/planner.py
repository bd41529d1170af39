"""The notifier's memory of what each action was told, and the plan of what to tell now.

`Planner.plan` takes alerts (changed ones, or those whose hold may have
ended), asks `policy.decide` per action, hands the rate limit's tokens out
(state changes before repeats, longest waiting first) and returns a `Plan`:
messages to queue, delivery state to write, holds to record. The notifier
commits the plan and then `committed()` makes it what the planner remembers.
Nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from cortexd.alerts.manager import AlertManager
from cortexd.alerts.model import Alert
from cortexd.notify.model import Action, Delivery
from cortexd.notify.payloads import labels_of
from cortexd.notify.policy import (
    TOLD_FIRING,
    Decided,
    Decision,
    Plan,
    View,
    decide,
    repeat_due,
    told,
)
from cortexd.notify.rules import Rules
from cortexd.notify.throttle import RateLimit

log = logging.getLogger(__name__)

# The payload's `event` for a message that waited: what it waited for.
_RELEASED = {
    "silenced": "silence_ended",
    "cooldown": "cooldown_ended",
    "rate_limit": "rate_limit_ended",
    "outbox_full": "outbox_freed",
}


class Planner:
    """Delivery state by alert fingerprint and action; decides what each action is told."""

    def __init__(self, alerts: AlertManager, rate: RateLimit) -> None:
        self.alerts = alerts
        self.rate = rate
        self.deliveries: dict[str, dict[str, Delivery]] = {}
        # Holds by reason, counted when a message starts to wait.
        self.suppressed: Counter[str] = Counter()

    def load(self, deliveries: Iterable[Delivery]) -> None:
        for delivery in deliveries:
            self.deliveries.setdefault(delivery.fingerprint, {})[delivery.action] = delivery

    def all(self) -> Iterator[Delivery]:
        for records in self.deliveries.values():
            yield from records.values()

    def held(self) -> Counter[str]:
        """What waits now, by reason."""
        return Counter(d.held for d in self.all() if d.held)

    def due(self, rules: Rules, now: float) -> Iterator[Alert]:
        """Tracked alerts with a held message or a repeat due."""
        for alert in self.alerts.tracked():
            for delivery in self.deliveries.get(alert.fingerprint, {}).values():
                action = rules.actions.get(delivery.action)
                if delivery.held or (action is not None and repeat_due(delivery, action, now)):
                    yield alert
                    break

    def told_firing_untracked(self) -> Iterator[tuple[str, Delivery]]:
        """(fingerprint, a delivery) of alerts told firing that are no longer tracked."""
        for fp, records in list(self.deliveries.items()):
            told_firing = [d for d in records.values() if d.kind in TOLD_FIRING]
            if told_firing and self.alerts.current(fp) is None:
                yield fp, told_firing[0]

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        for fp, name in keys:
            records = self.deliveries.get(fp, {})
            records.pop(name, None)
            if not records:
                self.deliveries.pop(fp, None)

    def stale(self, now: float, older: float) -> list[tuple[str, str]]:
        """(fingerprint, action) of settled state about alerts gone for `older` seconds."""
        return [
            (fp, d.action)
            for fp, records in self.deliveries.items()
            if self.alerts.current(fp) is None
            for d in records.values()
            if d.kind not in TOLD_FIRING and now - d.queued_at > older
        ]

    # -- planning -----------------------------------------------------------

    def plan(
        self,
        alerts: Iterable[Alert],
        now: float,
        cause: str | None,
        *,
        rules: Rules,
        instance: str,
        cooldown: float,
    ) -> Plan:
        """What to tell about `alerts` now; `cause` names the change, if one led here."""
        wanted = []
        for given in alerts:
            # The alert of this fingerprint as it is now (an event may name an older row).
            alert = self.alerts.current(given.fingerprint) or given
            decided = self._decide(alert, now, rules, instance, cooldown)
            if decided is not None:
                wanted.append(decided)
        # Tokens of the rate limit go to changes before repeats, longest waiting first.
        wanted.sort(key=lambda w: (w.only_repeats, w.waiting_since(now)))
        plan = Plan()
        for decided in wanted:
            if decided.sends and not self.rate.take():
                decided.hold_sends("rate_limit")
            self._apply(decided, now, cause, instance, plan)
        return plan

    def _decide(
        self, alert: Alert, now: float, rules: Rules, instance: str, cooldown: float
    ) -> Decided | None:
        fp = alert.fingerprint
        records = self.deliveries.setdefault(fp, {})
        matching = {a.name: a for a in rules.actions_for(alert)}
        names = set(matching) | {n for n, d in records.items() if d.kind in TOLD_FIRING}
        if not names:
            return None
        silenced = alert.state != "resolved" and self.alerts.is_silenced(alert)
        snapshot = alert.to_dict(silenced=silenced)
        labels = labels_of({"alert": snapshot, "instance": instance})
        decided = Decided(alert, snapshot, labels)
        for name in sorted(names):
            action = rules.actions.get(name)
            if action is None:
                continue  # no longer configured: nothing can be sent to it
            delivery = records.get(name) or Delivery(fp, name, alert.id)
            records[name] = delivery
            # An action whose rule no longer matches (a lower severity) is told it ended.
            state = alert.state if name in matching else "resolved"
            view = View(state, alert.severity.name, labels, alert.flapping, silenced)
            decided.decisions.append(
                (action, delivery, decide(delivery, view, action, now, cooldown))
            )
        return decided

    def _apply(
        self, decided: Decided, now: float, cause: str | None, instance: str, plan: Plan
    ) -> None:
        alert = decided.alert
        for action, delivery, decision in decided.decisions:
            if decision.send is not None:
                event = _message(decision, delivery, decided.snapshot, action, cause, now)
                event["instance"] = instance
                if not decision.record_only:
                    plan.messages.append((action.name, decision.send, alert.fingerprint, event))
                plan.deliveries.append(told(delivery, decision.send, alert, decided.labels, now))
            elif decision.held is not None:
                if self._hold(delivery, decision.held, now):
                    wanted = decision.wanted or "firing"
                    plan.held.append((alert.fingerprint, wanted, decision.held, alert.title))
            else:
                delivery.held = delivery.held_since = None

    def _hold(self, delivery: Delivery, reason: str, now: float) -> bool:
        """Mark `delivery` held for `reason`; whether that is new (and so counted)."""
        if delivery.held == reason:
            return False
        self.suppressed[reason] += 1
        log.info("notification for %s held back: %s", delivery.alert_id, reason)
        delivery.held, delivery.held_since = reason, now
        return True

    def committed(self, plan: Plan) -> None:
        """`plan` is in the database: remember it."""
        for delivery in plan.deliveries:
            self.deliveries.setdefault(delivery.fingerprint, {})[delivery.action] = delivery

    def outbox_full(self, plan: Plan, now: float) -> list[tuple[str, str, str, str]]:
        """Nothing of `plan` is queued: each of its messages waits, as held, for room.

        Returns the records of what started to wait (fingerprint, kind, reason, title).
        """
        records = []
        for name, kind, fp, event in plan.messages:
            delivery = self.deliveries.get(fp, {}).get(name)
            if delivery is not None and self._hold(delivery, "outbox_full", now):
                records.append((fp, kind, "outbox_full", str(event["alert"]["title"])))
        return records


def _message(
    decision: Decision,
    delivery: Delivery,
    snapshot: dict[str, Any],
    action: Action,
    cause: str | None,
    now: float,
) -> dict[str, Any]:
    if decision.repeat:
        why = "repeat"
    elif delivery.held:
        why = _RELEASED.get(delivery.held, "deferred")
    else:
        why = cause or "evaluated"
    event: dict[str, Any] = {
        "kind": decision.send or "firing",
        "alert": snapshot,
        "at": now,
        "event": why,
    }
    if action.type == "alertmanager" and delivery.labels:
        # What Alertmanager holds under the earlier label set ends in the same push.
        event["ended"] = [delivery.labels]
    return event
