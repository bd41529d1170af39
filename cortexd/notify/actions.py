"""Action types added at run time (by notifier plugins) beside the built-in ones.

One `ActionTypes` instance is built by the composition root and handed to
the notifier (which validates rules and delivers through it) and to the
plugin manager (which registers and unregisters types as plugins load).
An added type only changes how one attempt is made: its deliveries use the
same outbox, retries, backoff, dead letters, cooldown and rate limit as the
built-in types.

Until the owner of the added types has loaded them once (`hold()` then
`release()`), the rules file may name types nobody has registered yet; the
notifier validates the rules again on `release()` and after every change.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cortexd.notify.model import ACTION_TYPES, Action, Answer

log = logging.getLogger(__name__)

TYPE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# validate(options) -> [(option key or "", problem)]; empty when the options are fine.
Validate = Callable[[Mapping[str, Any]], list[tuple[str, str]]]
# send(action, event, entry id, timeout) -> Answer; blocking (the notifier runs it in a
# worker thread); raises DeliveryFailed.
Send = Callable[[Action, dict[str, Any], "int | str", float], Answer]


@dataclass(frozen=True, slots=True)
class ActionType:
    """One added action type: how to check a rule's options and how to send."""

    name: str
    validate: Validate
    send: Send
    owner: str
    # The longest one attempt may take (the notifier's attempt timeout bounds it too).
    timeout: float


class ActionTypes:
    """The added action types by name; changes are announced to `listeners`."""

    def __init__(self) -> None:
        self._types: dict[str, ActionType] = {}
        self._holds = 0
        self.listeners: list[Callable[[], None]] = []

    def register_action_type(
        self,
        type_name: str,
        validate: Validate,
        send: Send,
        *,
        owner: str = "",
        timeout: float = 10.0,
    ) -> None:
        """Add (or replace, for the same owner) action type `type_name`.

        Raises:
            ValueError: the name is malformed, built in, or taken by another owner.
        """
        if not TYPE_NAME.match(type_name):
            raise ValueError(f"action type {type_name!r}: lower-case letters, digits, - or _")
        if type_name in ACTION_TYPES:
            raise ValueError(f"action type {type_name!r} is built in")
        held = self._types.get(type_name)
        if held is not None and held.owner != owner:
            raise ValueError(f"action type {type_name!r} is registered by {held.owner}")
        self._types[type_name] = ActionType(type_name, validate, send, owner, timeout)
        self._changed()

    def unregister_action_type(self, type_name: str) -> bool:
        """Remove `type_name`; whether it was registered."""
        if self._types.pop(type_name, None) is None:
            return False
        self._changed()
        return True

    def unregister_owner(self, owner: str) -> list[str]:
        """Remove every type `owner` registered; returns their names."""
        names = [n for n, t in self._types.items() if t.owner == owner]
        for name in names:
            del self._types[name]
        if names:
            self._changed()
        return names

    def get(self, type_name: str) -> ActionType | None:
        return self._types.get(type_name)

    def names(self) -> list[str]:
        return sorted(self._types)

    @property
    def settled(self) -> bool:
        """False while an owner has announced types it has not loaded yet."""
        return self._holds == 0

    def hold(self) -> None:
        """Announce that types will be registered later (rules may name them meanwhile)."""
        self._holds += 1

    def release(self) -> None:
        """The announced types are registered (or failed); rules are checked strictly now."""
        if self._holds > 0:
            self._holds -= 1
            self._changed()

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # isolation boundary: one listener's bug is not the caller's
                log.exception("action type listener failed")
