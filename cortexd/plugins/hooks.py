"""Hooks: named points where plugins (and the daemon's own parts) run code.

`pre_check`, `post_check`, `pre_fix` (may veto), `post_fix`, `startup`,
`shutdown`, `plugin_loaded`. Handlers run by priority, highest first; each
is bounded by a deadline and isolated: one that raises or hangs is logged
and skipped, never the caller's failure.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

log = logging.getLogger(__name__)

HOOKS = ("pre_check", "post_check", "pre_fix", "post_fix", "startup", "shutdown", "plugin_loaded")
DEFAULT_HOOK_TIMEOUT = 10.0

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Registered:
    hook: str
    handler: Handler
    priority: int
    owner: str


class HookRegistry:
    """Handlers by hook name; `owner` lets a plugin's handlers go when it unloads."""

    def __init__(self, timeout: float = DEFAULT_HOOK_TIMEOUT) -> None:
        self.timeout = timeout
        self._handlers: dict[str, list[Registered]] = {name: [] for name in HOOKS}

    def add(self, hook: str, handler: Handler, *, priority: int = 0, owner: str = "") -> None:
        """Register `handler` for `hook`. Raises ValueError for an unknown hook."""
        if hook not in self._handlers:
            raise ValueError(f"unknown hook {hook!r} (known: {', '.join(HOOKS)})")
        entries = self._handlers[hook]
        entries.append(Registered(hook, handler, priority, owner))
        # Stable sort: equal priorities keep registration order.
        entries.sort(key=lambda r: -r.priority)

    def remove_owner(self, owner: str) -> None:
        """Drop every handler `owner` registered."""
        for hook, entries in self._handlers.items():
            self._handlers[hook] = [r for r in entries if r.owner != owner]

    def count(self, hook: str) -> int:
        return len(self._handlers.get(hook, []))

    def summary(self) -> dict[str, list[dict[str, Any]]]:
        return {
            hook: [{"owner": r.owner, "priority": r.priority} for r in entries]
            for hook, entries in self._handlers.items()
        }

    async def run(self, hook: str, payload: dict[str, Any]) -> list[Any]:
        """Run every handler of `hook`; returns their answers (None for a failed one)."""
        return [await self._call(entry, payload) for entry in list(self._handlers.get(hook, []))]

    async def veto(self, hook: str, payload: dict[str, Any]) -> str | None:
        """Run handlers until one vetoes: an answer of False or a reason string.

        Returns the reason (naming the handler's owner), or None when all agree.
        A failing handler does not veto.
        """
        for entry in list(self._handlers.get(hook, [])):
            answer = await self._call(entry, payload)
            if answer is False or (isinstance(answer, str) and answer):
                reason = answer if isinstance(answer, str) else "vetoed"
                return f"{entry.owner or 'a hook'}: {reason}"
        return None

    async def _call(self, entry: Registered, payload: dict[str, Any]) -> Any:
        try:
            with anyio.fail_after(self.timeout):
                return await entry.handler(payload)
        except TimeoutError:
            log.warning("%s hook of %s timed out after %gs", entry.hook, entry.owner, self.timeout)
        except Exception:  # isolation boundary: a hook's bug is logged, never the caller's
            log.exception("%s hook of %s failed", entry.hook, entry.owner)
        return None
