"""Alert notifications (docs/protocol.md): rules, a durable outbox, delivery and dead letters."""

from __future__ import annotations

from cortexd.notify.notifier import Notifier
from cortexd.notify.rules import Action, Rule, Rules, load_rules, parse_rules

__all__ = ["Action", "Notifier", "Rule", "Rules", "load_rules", "parse_rules"]
